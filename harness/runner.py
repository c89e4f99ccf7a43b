"""The runner: train one task with one optimizer and return tidy rows.

A run is defined by a :class:`RunSpec` (:func:`run_spec` checks the settings, fills in the
defaults and so fixes the run id, once) and carried out by :func:`execute_run`. :func:`run` is
the public entrance: it builds the task and the optimizer from names (or takes instances), makes
the spec and executes it; :mod:`harness.plan` makes the specs of many runs and executes them.

What happens in a run, in order:

1. The task is built on ``device`` (or taken as given), the optimizer is built from ``hparams``
   (validated), parameters are initialised from ``seed``.
2. Warm-up: ``warmup_steps`` training steps on *copies* of the parameters and a fresh optimizer
   state, then thrown away. Untimed; the run itself starts from the untouched initial state.
   No warm-up evaluation: the untimed evaluation at step 0 comes before the first timed step.
3. Evaluation at step 0, then at every ``eval_every`` steps and at the last step: loss (and
   accuracy) over each whole split in ``eval_splits``. Untimed. Step 0's is reused from an
   earlier run on the same task instance with the same parameter bytes
   (:mod:`harness.evaluation_memo`), as runs on one seed start from the same parameters.
4. Each training step: fetch the next batch (untimed; the task's iterator prepares it on the
   device), then, inside the stopwatch's timed section, the gradient and the optimizer update.
   The minibatch loss is read after the section closes and logged every ``log_every`` steps.
5. The run stops at ``steps`` (status ``completed``), when the timed seconds reach
   ``max_seconds`` (``time_limit``), or when the minibatch loss is NaN/inf or exceeds
   ``divergence_factor * max(1, first minibatch loss)`` (``diverged``; the rows so far are kept
   and the diverged parameters are still evaluated, so the table shows what happened).

The timing contract is in docs/timing.md; the row schema in :mod:`harness.results.schema`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from harness.defaults import DIVERGENCE_FACTOR, LOG_EVERY, WARMUP_STEPS
from harness.errors import UsageError
from harness.evaluation_memo import evaluate_initial
from harness.resolve import build_optimizer, build_task
from harness.results.schema import (
    BENCH,
    SPLIT_TRAIN_BATCH,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_TIME_LIMIT,
    canonical_json,
    definition_digest,
)
from harness.settings.validate import at_least, positive_int
from harness.timing import Stopwatch
from optimizers.base import Optimizer, OptState
from tasks.base import SPLITS, Batch, Params, Task, task_config

ProgressCallback = Callable[[int, float], None]
#: Called after each evaluation as ``on_eval(step, {split: {metric: value}})``; an exception it
#: raises (e.g. ``optuna.TrialPruned``) ends the run and propagates to the caller.
EvalCallback = Callable[[int, dict[str, dict[str, float]]], None]

DEFAULT_WARMUP_STEPS = WARMUP_STEPS
DEFAULT_LOG_EVERY = LOG_EVERY
DEFAULT_DIVERGENCE_FACTOR = DIVERGENCE_FACTOR


@dataclass
class RunResult:
    """The outcome of one run: its identity, how it ended, and its measurements.

    ``measurements`` holds ``(step, wall_time_s, split, metric, value)`` tuples; :meth:`frame`
    turns them into the tidy table with every column of the schema.
    """

    run_id: str
    suite: str
    task: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int
    budget_steps: int
    device: str
    status: str = STATUS_COMPLETED
    steps_done: int = 0
    train_seconds: float = 0.0
    tags: dict[str, Any] = field(default_factory=dict)
    task_cfg: dict[str, Any] = field(default_factory=dict)
    measurements: list[tuple[int, float, str, str, float]] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The tidy rows of this run (see :mod:`harness.results.schema`)."""
        constant = {
            "run_id": self.run_id,
            "suite": self.suite,
            "task": self.task,
            "task_cfg": canonical_json(self.task_cfg),
            "optimizer": self.optimizer,
            "hparams": canonical_json(self.hparams),
            "seed": self.seed,
            "status": self.status,
            "budget_steps": self.budget_steps,
            "tags": canonical_json(self.tags),
        }
        frame = pd.DataFrame(
            self.measurements, columns=["step", "wall_time_s", "split", "metric", "value"]
        )
        for column, value in constant.items():
            frame[column] = value
        return BENCH.frame(frame[list(BENCH.own)], self.device)

    def final(self, split: str, metric: str = "loss") -> float:
        """The last measured value of ``metric`` on ``split`` (NaN if never measured)."""
        for _step, _wall, s, m, value in reversed(self.measurements):
            if s == split and m == metric:
                return value
        return math.nan


def run_id_for(
    *,
    suite: str,
    task: str,
    task_cfg: dict[str, Any],
    optimizer: str,
    hparams: dict[str, Any],
    seed: int,
    steps: int,
    settings: dict[str, Any],
    tags: dict[str, Any] | None = None,
) -> str:
    """A readable id that is the same exactly when the run's definition, its measurement
    settings (``settings``: device, budgets, evaluation and logging cadence) and its ``tags``
    (which say what the run is for, e.g. which comparison or tuning study) are the same."""
    digest = definition_digest(
        {
            "tags": tags or {},
            "suite": suite,
            "task": task,
            "task_cfg": task_cfg,
            "optimizer": optimizer,
            "hparams": hparams,
            "seed": seed,
            "steps": steps,
            **settings,
        }
    )
    return f"{task}-{optimizer}-s{seed}-{digest}"


def run_settings(
    *,
    device: str | torch.device,
    eval_every: int,
    log_every: int,
    max_seconds: float | None,
    eval_splits: Sequence[str] = SPLITS,
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
) -> dict[str, Any]:
    """The measurement settings that change a run's rows (part of its id)."""
    return {
        "device": str(torch.device(device)),
        "eval_every": eval_every,
        "log_every": log_every,
        "max_seconds": max_seconds,
        "eval_splits": list(eval_splits),
        "divergence_factor": divergence_factor,
    }


def default_eval_every(steps: int) -> int:
    """Twenty evaluations per run (at least one step apart)."""
    return max(1, steps // 20)


def make_train_step(
    task: Task, optimizer: Optimizer
) -> Callable[[Params, OptState, Batch], tuple[Params, OptState, torch.Tensor]]:
    """The timed unit of work: gradient of the minibatch loss, then the optimizer update.

    Returns ``step(params, state, batch) -> (new_params, new_state, loss)``, ``loss`` detached.
    The update runs under ``torch.no_grad``; the new parameters are leaves that the next step
    marks as requiring gradients.
    """

    def train_step(
        params: Params, state: OptState, batch: Batch
    ) -> tuple[Params, OptState, torch.Tensor]:
        params = tuple(p.requires_grad_(True) for p in params)
        loss = task.loss(params, batch)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            new_params, new_state = optimizer.update(grads, state, params)
        return new_params, new_state, loss.detach()

    return train_step


@dataclass(frozen=True)
class RunSpec:
    """One run's definition, validated: everything that determines its rows, and its id.

    Built by :func:`run_spec` (so every field is checked and defaulted the same way, whoever
    plans the run) and consumed by :func:`execute_run`. ``task_cfg`` is the task's full
    configuration and ``hparams`` the optimizer's full hyperparameters (defaults filled in);
    ``device`` is ``str(torch.device(...))``.
    """

    suite: str
    task: str
    task_cfg: dict[str, Any]
    optimizer: str
    hparams: dict[str, Any]
    seed: int
    steps: int
    device: str
    eval_every: int
    log_every: int
    warmup_steps: int
    max_seconds: float | None
    eval_splits: tuple[str, ...]
    divergence_factor: float | None
    tags: dict[str, Any]

    @functools.cached_property
    def run_id(self) -> str:
        """The run's id (:func:`run_id_for`), computed once."""
        return run_id_for(
            suite=self.suite,
            task=self.task,
            task_cfg=self.task_cfg,
            optimizer=self.optimizer,
            hparams=self.hparams,
            seed=self.seed,
            steps=self.steps,
            settings=run_settings(
                device=self.device,
                eval_every=self.eval_every,
                log_every=self.log_every,
                max_seconds=self.max_seconds,
                eval_splits=self.eval_splits,
                divergence_factor=self.divergence_factor,
            ),
            tags=self.tags,
        )


def run_spec(
    *,
    task: str,
    task_cfg: dict[str, Any],
    optimizer: Optimizer,
    steps: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    suite: str = "adhoc",
    eval_every: int | None = None,
    log_every: int = DEFAULT_LOG_EVERY,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    max_seconds: float | None = None,
    eval_splits: Sequence[str] = SPLITS,
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
    tags: dict[str, Any] | None = None,
) -> RunSpec:
    """Check the run settings (a one-line ``UsageError`` for the first bad one) and fill in the
    defaults; ``task_cfg`` must be the task's full configuration and ``optimizer`` the built
    optimizer (its ``name`` and ``hparams`` go into the spec)."""
    positive_int("steps", steps)
    eval_every = default_eval_every(steps) if eval_every is None else eval_every
    positive_int("eval_every", eval_every)
    positive_int("log_every", log_every)
    at_least("warmup_steps", warmup_steps, 0)
    at_least("max_seconds", max_seconds, 0, strict=True)
    return RunSpec(
        suite=suite,
        task=task,
        task_cfg=dict(task_cfg),
        optimizer=optimizer.name,
        hparams=dict(optimizer.hparams),
        seed=seed,
        steps=steps,
        device=str(torch.device(device)),
        eval_every=eval_every,
        log_every=log_every,
        warmup_steps=warmup_steps,
        max_seconds=max_seconds,
        eval_splits=tuple(eval_splits),
        divergence_factor=divergence_factor,
        tags=dict(tags or {}),
    )


def run(
    task: str | Task,
    optimizer: str | Optimizer,
    hparams: dict[str, Any] | None = None,
    steps: int | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    *,
    suite: str = "adhoc",
    task_cfg: dict[str, Any] | None = None,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    log_every: int = DEFAULT_LOG_EVERY,
    eval_splits: Sequence[str] = SPLITS,
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
    stopwatch: Stopwatch | None = None,
    progress: ProgressCallback | None = None,
    on_eval: EvalCallback | None = None,
    tags: dict[str, Any] | None = None,
) -> RunResult:
    """Train ``task`` with ``optimizer`` for ``steps`` steps from ``seed``; see the module doc.

    Args:
        task: a registered name (built with ``task_cfg`` on ``device``) or a task instance.
        task_cfg: the task's configuration keywords; with an instance, say how it was built
            (the run id covers the full configuration, defaults filled in).
        optimizer: a registered name (built with ``hparams``) or an optimizer instance (then
            ``hparams`` must be None).
        steps: the step budget (default: the task's ``default_steps``).
        eval_every: steps between whole-split evaluations (default: ``steps // 20``, at least 1).
        max_seconds: a budget on the timed training seconds (None: no limit).
        stopwatch: the timing layer (default: ``Stopwatch.for_device(task.device)``); tests
            inject one with a fake clock.
        progress: called as ``progress(step, minibatch_loss)`` at every logged step.
        on_eval: called as ``on_eval(step, {split: metrics})`` after every evaluation (untimed);
            an exception it raises stops the run and propagates (how a tuner prunes a trial).
        tags: extra provenance stored in the ``tags`` column.
    """
    task_cfg = dict(task_cfg or {})
    if isinstance(task, str):
        task = build_task(task, device, task_cfg)
    task_cfg = task_config(type(task), task_cfg)
    if isinstance(optimizer, str):
        optimizer = build_optimizer(optimizer, dict(hparams or {}))
    elif hparams is not None:
        raise UsageError("give hparams with an optimizer name, not with an optimizer instance")
    spec = run_spec(
        task=task.name,
        task_cfg=task_cfg,
        optimizer=optimizer,
        steps=task.default_steps if steps is None else steps,
        seed=seed,
        device=task.device,
        suite=suite,
        eval_every=eval_every,
        log_every=log_every,
        warmup_steps=warmup_steps,
        max_seconds=max_seconds,
        eval_splits=eval_splits,
        divergence_factor=divergence_factor,
        tags=tags,
    )
    for split in eval_splits:
        task.check_split(split)
    return execute_run(
        spec, task, optimizer, stopwatch=stopwatch, progress=progress, on_eval=on_eval
    )


def execute_run(
    spec: RunSpec,
    task: Task,
    optimizer: Optimizer,
    *,
    stopwatch: Stopwatch | None = None,
    progress: ProgressCallback | None = None,
    on_eval: EvalCallback | None = None,
) -> RunResult:
    """Run ``spec`` with the ``task`` and ``optimizer`` it was made for (see the module doc).

    ``task`` must be the task ``spec`` names, built with ``spec.task_cfg`` on ``spec.device``,
    and ``optimizer`` the one whose name and hyperparameters ``spec`` holds; ``ValueError``
    when the names or the device differ. The other arguments are :func:`run`'s.
    """
    if task.name != spec.task or str(task.device) != spec.device:
        raise ValueError(
            f"the task is {task.name} on {task.device}: {spec.run_id} needs "
            f"{spec.task} on {spec.device}"
        )
    if optimizer.name != spec.optimizer:
        raise ValueError(f"the optimizer is {optimizer.name}: {spec.run_id} needs {spec.optimizer}")
    steps, eval_every, log_every = spec.steps, spec.eval_every, spec.log_every
    max_seconds, eval_splits = spec.max_seconds, spec.eval_splits
    divergence_factor = spec.divergence_factor
    stopwatch = stopwatch or Stopwatch.for_device(task.device)
    result = RunResult(
        run_id=spec.run_id,
        suite=spec.suite,
        task=spec.task,
        task_cfg=spec.task_cfg,
        optimizer=spec.optimizer,
        hparams=dict(spec.hparams),
        seed=spec.seed,
        budget_steps=steps,
        device=str(task.device),
        tags=dict(spec.tags),
    )
    train_step = make_train_step(task, optimizer)
    params = task.init_params(spec.seed)
    _warm_up(train_step, task, optimizer, params, spec.seed, spec.warmup_steps)

    record = result.measurements.append

    def evaluate(step: int) -> None:
        measured = {
            split: evaluate_initial(task, params, split)
            if step == 0
            else task.evaluate(params, split)
            for split in eval_splits
        }
        for split, metrics in measured.items():
            for metric, value in metrics.items():
                record((step, stopwatch.total, split, metric, value))
        if on_eval is not None:
            on_eval(step, measured)

    evaluate(0)
    state = optimizer.init(params)
    batches = task.batches("train", spec.seed)
    threshold = math.inf
    step = 0
    while step < steps:
        batch = next(batches)
        with stopwatch.timed():
            params, state, loss = train_step(params, state, batch)
        step += 1
        loss_value = loss.item()
        if step == 1 and divergence_factor is not None:
            threshold = divergence_factor * max(1.0, abs(loss_value))
        diverged = not math.isfinite(loss_value) or loss_value > threshold
        if diverged:
            result.status = STATUS_DIVERGED
        elif max_seconds is not None and stopwatch.total >= max_seconds:
            result.status = STATUS_TIME_LIMIT
        last = diverged or result.status == STATUS_TIME_LIMIT or step == steps
        if step % log_every == 0 or last:
            record((step, stopwatch.total, SPLIT_TRAIN_BATCH, "loss", loss_value))
            if progress is not None:
                progress(step, loss_value)
        if step % eval_every == 0 or last:
            evaluate(step)
        if last:
            break
    result.steps_done = step
    result.train_seconds = stopwatch.total
    return result


def _warm_up(
    train_step: Callable[..., Any],
    task: Task,
    optimizer: Optimizer,
    params: Params,
    seed: int,
    warmup_steps: int,
) -> None:
    """Run ``warmup_steps`` throw-away steps on copies (untimed; the run's state is untouched).

    It evaluates nothing: the run's own evaluation at step 0, untimed, comes before the first
    timed step and warms the evaluation path (on the language model a whole-split evaluation of
    the training split costs as much as 128 steps, so a second one here cost 5 % of a trial).
    """
    if warmup_steps == 0:
        return
    copies = tuple(p.detach().clone() for p in params)
    state = optimizer.init(copies)
    batches = task.batches("train", seed)
    for _ in range(warmup_steps):
        copies, state, _loss = train_step(copies, state, next(batches))
