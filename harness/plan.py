"""Run many (task, optimizer, seed) runs into one tidy results file, resumably.

:func:`execute` takes a list of :class:`RunPlan` and:

* checks every plan before the first run starts (names, hyperparameters, pairings), so a typo
  fails in a second, not after an hour;
* shows progress (:mod:`harness.progress`): one line per finished run on stderr, ``[k/N] <run>:
  <outcome>; elapsed .., ETA ..``, where ``<run>`` is the task, the optimizer, the seed and
  whatever tells apart runs that share them (the ``comparison`` tag always, then the swept
  settings: ``lr=0.01``), the ETA weighted by each run's cost
  (:class:`harness.progress.WeightedEta`); on a terminal also a bar over the runs (and one over
  the steps of the run in flight);
* runs seed by seed: every plan's runs of the first seed, in the plans' order, then the next
  seed's, so a stopped chunk leaves whole seeds across the optimizers, and the machine's drift
  over hours (and a resumed call on another machine, named in each row's ``device``) falls on
  every optimizer alike; ``out`` keeps the plans' order;
* saves each finished run's rows at once under ``<out>.parts/`` (atomically), so an interrupted
  invocation loses at most the run in flight: rerunning the same command skips the finished runs
  (their ids are deterministic) and completes only the missing ones;
* writes ``out`` atomically once every run is done, then removes the parts folder;
* with ``max_seconds``, is a resumable chunk (:class:`RunDeadline`): it starts no run that would
  end past the budget, lets the runs in flight finish and raises
  :class:`~harness.errors.Unfinished` (the CLI's exit 75) when runs are left; the same command
  continues;
* stops gracefully on a signal (:class:`~harness.stopping.StopRequest`): the first SIGTERM or
  SIGINT starts no new run, lets the runs in flight finish and save, and raises
  :class:`~harness.errors.Interrupted` (the CLI's exit 130) when runs are left; a second one
  stops at once (the worker processes are killed; their runs are redone on the rerun). Workers
  ignore both signals, so a terminal's Ctrl-C or a scheduler's SIGTERM to the whole process
  group reaches only this decision;
* with ``workers=N`` (N > 1), runs N plans at a time in N spawned 1-thread processes (on a CPU,
  N one-thread processes beat one N-thread process in throughput; each run's clock still
  measures only its own work, but runs share memory bandwidth, so compare timings only between
  runs made with the same ``workers``). Workers import the same plugins (``plugin_modules``).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from harness.defaults import LOG_EVERY, WARMUP_STEPS
from harness.errors import Interrupted, Unfinished, UsageError
from harness.progress import Log, Progress, WeightedEta, display_mode, duration
from harness.registry import OPTIMIZERS, TASKS, create_optimizer, create_task
from harness.results.io import check_results_target, read_results, write_results
from harness.results.schema import canonical_json
from harness.runner import RunResult, RunSpec, execute_run, run_spec
from harness.settings.validate import at_least
from harness.stopping import StopRequest
from optimizers.base import Optimizer
from tasks.base import Task, task_config


@dataclass(frozen=True)
class RunPlan:
    """Everything that defines one run (see :func:`harness.runner.run` for the meaning)."""

    task: str
    optimizer: str
    seed: int
    suite: str = "bench"
    steps: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    task_cfg: dict[str, Any] = field(default_factory=dict)
    eval_every: int | None = None
    log_every: int = LOG_EVERY
    warmup_steps: int = WARMUP_STEPS
    max_seconds: float | None = None
    device: str = "cpu"
    tags: dict[str, Any] = field(default_factory=dict)

    def run_id(self) -> str:
        """The id of the run this plan makes (resolves the plan: see :func:`resolve_plan`)."""
        return resolve_plan(self).run_id


@dataclass(frozen=True)
class PlannedRun:
    """A :class:`RunPlan` resolved once: its validated definition and id (``spec``) and the
    optimizer built for it (what :func:`execute` runs; see :func:`resolve_plan`)."""

    plan: RunPlan
    spec: RunSpec
    optimizer: Optimizer

    @property
    def run_id(self) -> str:
        return self.spec.run_id


def resolve_plan(plan: RunPlan) -> PlannedRun:
    """Check ``plan`` and resolve it once: the task's class and full configuration, the
    optimizer (built once: for a learned optimizer, its checkpoint is loaded once), the step
    budget and the measurement settings, and so the run id. A one-line ``UsageError`` names the
    first thing that cannot run (an unknown name, a bad hyperparameter or setting, a task that
    does not pair with the optimizer)."""
    task_class = TASKS.get(plan.task).factory
    OPTIMIZERS.get(plan.optimizer)
    optimizer = create_optimizer(plan.optimizer, **plan.hparams)
    is_task_class = isinstance(task_class, type) and issubclass(task_class, Task)
    if is_task_class and not task_class.pairs_with_optimizer(plan.optimizer):
        raise UsageError(
            f"task {plan.task!r} does not pair with optimizer {plan.optimizer!r}; "
            f"it pairs with: {', '.join(task_class.pairs_with)}"
        )
    spec = run_spec(
        task=plan.task,
        task_cfg=task_config(task_class, plan.task_cfg),
        optimizer=optimizer,
        steps=plan.steps if plan.steps is not None else task_class.default_steps,
        seed=plan.seed,
        device=plan.device,
        suite=plan.suite,
        eval_every=plan.eval_every,
        log_every=plan.log_every,
        warmup_steps=plan.warmup_steps,
        max_seconds=plan.max_seconds,
        tags=plan.tags,
    )
    return PlannedRun(plan=plan, spec=spec, optimizer=optimizer)


def resolve_plans(plans: Sequence[RunPlan | PlannedRun]) -> list[PlannedRun]:
    """:func:`resolve_plan` of each plan (those already resolved are kept), in order; a
    ``UsageError`` for the first that cannot run, or for an empty list (nothing has run yet)."""
    if not plans:
        raise UsageError("nothing to run: the selection is empty")
    return [p if isinstance(p, PlannedRun) else resolve_plan(p) for p in plans]


class RunDeadline:
    """A chunk's stop rule: another run may start while the seconds since this object was made
    plus the longest run so far (0 before the first ends) stay within ``max_seconds``; the first
    run of a call always may, so every chunk makes progress. ``clock``: seconds, monotonic."""

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not max_seconds > 0:
            raise UsageError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.max_seconds = max_seconds
        self.clock = clock
        self.start = clock()
        self.longest = 0.0
        self.started = 0
        self.refused = False

    def allows_another(self) -> bool:
        """Whether a run may start now (counted as started when it may)."""
        used = self.clock() - self.start
        if self.started and used + self.longest > self.max_seconds:
            self.refused = True
            return False
        self.started += 1
        return True

    def finished(self, seconds: float) -> None:
        """A run took ``seconds`` of wall-clock (from its start to its rows saved)."""
        self.longest = max(self.longest, seconds)


def parts_dir(out: Path) -> Path:
    """Where finished runs are saved until ``out`` is written."""
    return out.with_name(out.name + ".parts")


def execute(
    plans: Sequence[RunPlan | PlannedRun],
    out: str | Path,
    *,
    resume: bool = True,
    log: Log | None = None,
    progress_bars: bool | None = None,
    workers: int = 1,
    plugin_modules: Sequence[str] = (),
    keep: pd.DataFrame | None = None,
    max_seconds: float | None = None,
) -> pd.DataFrame:
    """Run ``plans`` (skipping those already saved when ``resume``) and write the tidy ``out``.

    Each plan is resolved once (:func:`resolve_plans`; pass :class:`PlannedRun` objects to
    resolve them beforehand), before the first run starts. In this process a run uses the
    optimizer its plan built; a worker process builds it once more from the resolved
    hyperparameters (a built optimizer need not be picklable).

    Args:
        progress_bars: show tqdm bars on stderr, one over the runs and (with ``workers`` = 1)
            one over the steps of the run in flight (None: only when stderr is a terminal).
            The one-line-per-run log is written either way.
        workers: how many runs at a time, each in its own 1-thread process (1: in this process).
        plugin_modules: modules the worker processes import before running (local plugins).
        keep: rows of runs that are not in ``plans`` but belong in ``out`` (a suite keeps the
            earlier rows of the runs it could not rerun); written after the new rows.
        max_seconds: this call's budget of wall-clock seconds (None: none): no run starts that
            would end past it, by the longest run so far (:class:`RunDeadline`).
    Returns the whole tidy table, as written to ``out``.
    Raises :class:`~harness.errors.Unfinished` when ``max_seconds`` left runs to do, and
    :class:`~harness.errors.Interrupted` when a signal did (the finished ones saved in the
    parts folder, ``out`` unwritten; a second signal raises ``KeyboardInterrupt`` at once).
    """
    out = Path(out)
    at_least("workers", workers, 1)
    deadline = None if max_seconds is None else RunDeadline(max_seconds)
    check_results_target(out)  # before any work: the format, its engine, a writable folder
    planned = resolve_plans(plans)
    log = log or _stderr
    unique = {p.run_id: p for p in planned}
    parts = parts_dir(out)
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    done = {p.stem for p in parts.glob("*.csv")} if parts.exists() else set()
    already = [run_id for run_id in unique if run_id in done]
    if already:
        log(f"resuming: {len(already)} of {len(unique)} runs already saved in {parts}")

    labels = dict(zip(unique, run_labels([p.plan for p in unique.values()]), strict=True))
    todo = [(p, labels[run_id]) for run_id, p in unique.items() if run_id not in done]
    todo.sort(key=lambda item: item[0].plan.seed)  # seed by seed (stable: plan order within)
    show_bars = display_mode(progress_bars) == "bar"
    work = {label: (run.plan.task, run.spec.steps) for run, label in todo}
    eta = WeightedEta(len(unique), len(already), work=work, workers=workers)
    progress = Progress(
        len(unique),
        desc="runs",
        unit="run",
        initial=len(already),
        show="bar" if show_bars else "lines",
        log=log,
    )

    def finished(label: str, summary: str) -> None:
        eta.finished(label)
        elapsed = duration(eta.elapsed())
        progress.write(
            f"[{eta.count}/{eta.total}] {label}: {summary}; elapsed {elapsed}, {eta.text()}"
        )
        progress.update()

    stop = StopRequest("the runs in flight", log=progress.write)

    def may_start() -> bool:
        return not stop() and (deadline is None or deadline.allows_another())

    def took(seconds: float) -> None:
        if deadline is not None:
            deadline.finished(seconds)

    try:
        with stop:
            if workers == 1 or len(todo) <= 1:
                tasks: dict[tuple[str, str, str], Task] = {}  # each dataset is loaded once
                for run, label in todo:
                    if not may_start():
                        break
                    began = time.monotonic()
                    summary = run_and_save(run, parts, label, show_bars, tasks)
                    took(time.monotonic() - began)
                    finished(label, summary)
            else:
                _execute_in_workers(
                    todo, parts, workers, list(plugin_modules), finished, may_start, took
                )
    finally:
        progress.close()

    def saved() -> int:
        return len({p.stem for p in parts.glob("*.csv")} & set(unique))

    if stop() and (count := saved()) < len(unique):
        raise Interrupted(
            f"interrupted by {stop.name} after the runs in flight: {count} of {len(unique)} "
            f"runs saved in {parts}; rerun the same command to continue"
        )
    if deadline is not None and deadline.refused:
        raise Unfinished(
            f"max_seconds={max_seconds:g} used (the longest run took {deadline.longest:.0f} s): "
            f"{saved()} of {len(unique)} runs saved in {parts}; rerun the same command to continue"
        )

    frames = [read_results(parts / f"{run_id}.csv") for run_id in unique]
    if keep is not None and not keep.empty:
        frames.append(keep[[c for c in frames[0].columns if c in keep.columns]])
    frame = pd.concat(frames, ignore_index=True)
    write_results(frame, out)
    shutil.rmtree(parts, ignore_errors=True)
    kept = f" and {keep.run_id.nunique()} kept runs" if keep is not None and len(keep) else ""
    log(f"wrote {len(frame)} rows from {len(unique)} runs{kept} to {out}")
    return frame


def run_labels(plans: Sequence[RunPlan]) -> list[str]:
    """``task optimizer [key=value ...] seed N`` for each plan: the ``comparison`` tag whenever
    a plan has one, then, among plans that share task, optimizer and seed, the settings whose
    values differ (task settings, hyperparameters, steps, other tags), as few as tell them
    apart."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault((plan.task, plan.optimizer, plan.seed), []).append(index)
    shown: list[list[str]] = [
        [f"comparison={plan.tags['comparison']}"] if "comparison" in plan.tags else []
        for plan in plans
    ]
    for members in groups.values():
        if len(members) < 2:
            continue
        described = [_describable(plans[i]) for i in members]
        chosen = _telling_keys([shown[i] for i in members], described)
        for i, d in zip(members, described, strict=True):
            shown[i] += [f"{key}={_shown(d.get(key))}" for key in chosen]
    return [
        " ".join([plan.task, plan.optimizer, *extra, f"seed {plan.seed}"])
        for plan, extra in zip(plans, shown, strict=True)
    ]


def _telling_keys(shown: list[list[str]], described: list[dict[str, Any]]) -> list[str]:
    """The fewest keys, in :func:`_describable`'s order, whose values (after what is already
    ``shown``) tell the plans apart."""
    keys = [k for k in described[0] if k != "comparison"]
    keys += sorted({k for d in described for k in d} - set(keys) - {"comparison"})
    chosen: list[str] = []
    for key in keys:
        signatures = {
            (*already, *(_shown(d.get(k)) for k in chosen))
            for already, d in zip(shown, described, strict=True)
        }
        if len(signatures) == len(described):
            break
        if len({_shown(d.get(key)) for d in described}) > 1:
            chosen.append(key)
    return chosen


def _describable(plan: RunPlan) -> dict[str, Any]:
    """What may tell a plan apart, in the order it is shown: task settings, hyperparameters,
    budgets, then tags (a name clash keeps the first)."""
    found: dict[str, Any] = {}
    settings = {
        "steps": plan.steps,
        "max_seconds": plan.max_seconds,
        "eval_every": plan.eval_every,
        "log_every": plan.log_every,
        "device": plan.device,
        "suite": plan.suite,
    }
    for source in (plan.task_cfg, plan.hparams, settings, plan.tags):
        for key, value in source.items():
            found.setdefault(str(key), value)
    return found


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


# a worker process's tasks, kept for the worker's life so each dataset is loaded once
_WORKER_TASKS: dict[tuple[str, str, str], Task] = {}


def run_and_save(
    run: PlannedRun,
    parts: Path,
    label: str,
    progress_bars: bool | None,
    tasks: dict[tuple[str, str, str], Task],
) -> str:
    """Run one resolved plan and save its rows as ``parts/<run_id>.csv``; returns a summary
    line. ``tasks`` caches the built tasks by (name, settings, device)."""
    plan = run.plan
    key = (plan.task, canonical_json(plan.task_cfg), plan.device)
    if key not in tasks:
        tasks[key] = create_task(plan.task, device=plan.device, **plan.task_cfg)
    result = _run_with_progress(run, tasks[key], label, progress_bars)
    write_results(result.frame(), parts / f"{run.run_id}.csv")
    return _summary(result)


def _worker_init(plugin_modules: list[str]) -> None:
    import torch

    from harness.resolve import load_plugins

    for kind in (signal.SIGINT, signal.SIGTERM):  # the parent decides (StopRequest)
        signal.signal(kind, signal.SIG_IGN)
    torch.set_num_threads(1)
    if plugin_modules:
        load_plugins(plugin_modules)


def _run_in_worker(plan: RunPlan, spec: RunSpec, parts: Path, label: str) -> str:
    """Build the optimizer from the resolved hyperparameters (once) and run the plan."""
    optimizer = create_optimizer(spec.optimizer, **spec.hparams)
    run = PlannedRun(plan=plan, spec=spec, optimizer=optimizer)
    return run_and_save(run, parts, label, False, _WORKER_TASKS)


def _execute_in_workers(
    labelled: list[tuple[PlannedRun, str]],
    parts: Path,
    workers: int,
    plugin_modules: list[str],
    on_finished: Callable[[str, str], None],
    may_start: Callable[[], bool] = lambda: True,
    took: Callable[[float], None] = lambda seconds: None,
) -> None:
    """Run the plans ``workers`` at a time in spawned processes; the first failure stops the
    submission of new runs, lets the ones in flight finish (their rows are saved), and is
    re-raised. ``may_start()`` is asked before each submission (False: submit no more);
    ``took(seconds)`` hears each finished run's wall-clock from its submission. A
    ``KeyboardInterrupt`` here (a second signal) kills the workers and is re-raised at once."""
    context = multiprocessing.get_context("spawn")
    pending = list(reversed(labelled))
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=(plugin_modules,),
    ) as pool:
        running: dict[Future[str], tuple[str, float]] = {}
        failure: BaseException | None = None
        stopped = False
        try:
            while pending or running:
                while pending and failure is None and not stopped and len(running) < workers:
                    if not may_start():
                        stopped = True
                        break
                    run, label = pending.pop()
                    future = pool.submit(_run_in_worker, run.plan, run.spec, parts, label)
                    running[future] = (label, time.monotonic())
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    label, submitted = running.pop(future)
                    took(time.monotonic() - submitted)
                    try:
                        on_finished(label, future.result())
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # re-raised once the runs in flight end
                        failure = failure or exc
        except KeyboardInterrupt:
            _kill_workers(pool)
            raise
        if failure is not None:
            raise failure


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s worker processes (they ignore SIGINT and SIGTERM), so that leaving the
    pool does not wait for the runs in flight; a rerun redoes them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle
    for process in processes:
        process.kill()
    for process in processes:
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)


def _run_with_progress(
    run: PlannedRun, task: Task, label: str, progress_bars: bool | None
) -> RunResult:
    bar = Progress(
        run.spec.steps,
        desc=label,
        unit="step",
        show="bar" if display_mode(progress_bars) == "bar" else "off",
        leave=False,
        position=1,
    )
    with bar:

        def progress(step: int, loss: float) -> None:
            bar.update(step - bar.n, postfix={"loss": f"{loss:.4g}"})

        return execute_run(run.spec, task, run.optimizer, progress=progress)


def _summary(result: RunResult) -> str:
    parts = [f"{result.status} after {result.steps_done} steps in {result.train_seconds:.2f} s"]
    for split in ("train", "test"):
        value = result.final(split)
        if value == value:  # not NaN
            parts.append(f"{split} loss {value:.4g}")
    return ", ".join(parts)


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
