"""The tuning loop, the re-evaluation of the winner, and the lookup of tuned configurations.

:func:`tune` runs a study until it holds ``trials`` counted trials (see
:mod:`harness.tuning.study`), or, with ``until="saturated"``, until the study meets the saturation
rule (:mod:`harness.tuning.saturation`) with ``trials`` as the cap; then the study's trial count
becomes the count at which it saturated. Any number of workers may tune the same study at once,
on one machine or many (a PostgreSQL server: docs/tuning-across-machines.md): each trial is
claimed under the storage's claim lock, so together they run exactly the trials needed; a running
trial beats a heartbeat, and one whose worker died (``kill -9``, a lost machine) is re-queued by
any other worker after the grace period, or by a rerun. A worker with nothing left to claim waits
while other workers' trials run, so a lost one is still recovered; then one worker, under a
lease, finishes the study (the confirmation, the re-evaluation, the files) and the others return.
The optimizer's default hyperparameters are queued as the first trial (except for the grid
sampler, whose points are the whole design). A diverged trial completes with a penalty value (see
:mod:`harness.tuning.objective`), so the sampler learns to avoid where runs diverge.

When the study is complete, the best configuration is trained again with ``eval_seeds`` fresh
seeds (``EVAL_SEED_OFFSET + k``; the tuning seeds are ``0 .. seeds-1``), with whole-split
evaluations, and written as tidy rows (``OUT/<study>/best_runs.csv``) whose ``tags`` name the
study, the trial, the trial count and the step budget. The study's trials and an
objective-against-learning-rate plot are written next to them.

Samplers are seeded per trial (:mod:`harness.tuning.sampler`): a resumed, extended or shared
study proposes what an uninterrupted one would, and never replays the proposals of its start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from harness.errors import UsageError
from harness.plan import RunPlan, execute
from harness.progress import Log, WeightedEta
from harness.registry import OPTIMIZERS, TASKS
from harness.resolve import build_task
from harness.results.io import read_results
from harness.results.schema import canonical_json
from harness.settings.tune import DEFAULT_STORAGE, TuneSettings
from harness.tuning.export import (
    plot_best_so_far,
    plot_objective_vs_lr,
    trials_frame,
    write_trials,
)
from harness.tuning.objective import TrialDiverged, evaluate_configuration
from harness.tuning.sampler import make_sampler as build_sampler
from harness.tuning.saturation import (
    ATTR_CONFIRMATION,
    CONFIRM_SEED_OFFSET,
    Confirmation,
    Saturation,
    chosen_trial,
    fresh_seed_mean,
    halves_best,
    saturation_verdict,
    stored_confirmation,
    study_saturation,
    trial_values,
)
from harness.tuning.space import SearchSpace, grid_points_total, search_space
from harness.tuning.storage import Heartbeat, OpenedStorage, fail_once, open_storage
from harness.tuning.study import (
    ATTR_DEFAULTS_QUEUED,
    ATTR_DIVERGED,
    ATTR_FINISHER,
    ATTR_HEARTBEAT,
    ATTR_PROTOCOL,
    ATTR_TRIALS,
    ATTR_UNTIL,
    PROTOCOL_VERSION,
    Protocol,
    count_trials,
    counted_trials,
    load_existing,
    load_or_create,
    recover_interrupted,
    requeue,
    space_as_data,
    stored_protocol,
    study_name,
    study_task,
    surplus_key,
    worker_id,
)
from optimizers.base import resolve_hparams
from tasks.base import task_config

EVAL_SEED_OFFSET = 1000
#: a confirmation's re-run values so far (resumed after a stop; emptied when it is stored)
ATTR_CONFIRMING = "confirming"


@dataclass
class TuneOutcome:
    study: str
    counted: int
    ran: int
    best_number: int | None
    best_value: float | None
    best_hparams: dict[str, Any] | None
    best_runs: Path | None
    saturation: Saturation | None = None


def prepare(settings: TuneSettings) -> tuple[Protocol, SearchSpace, dict[str, Any]]:
    """Validate ``settings``; the protocol, the search space and the base hyperparameters."""
    settings.check()
    task_class = TASKS.get(settings.task).factory
    optimizer_class = OPTIMIZERS.get(settings.optimizer).factory
    specs = getattr(optimizer_class, "hparam_specs", ())
    base = resolve_hparams(specs, settings.fixed, owner=settings.optimizer)
    space = search_space(settings.optimizer, specs, settings.search, settings.fixed)
    budget = settings.budget_steps or task_class.default_steps
    if settings.sampler == "grid":
        size = grid_points_total(space, settings.grid_points)
        if settings.trials > size:
            raise UsageError(
                f"the grid has {size} points: trials must be <= {size} with sampler=grid"
            )
    protocol = Protocol(
        task=settings.task,
        task_cfg=task_config(task_class, settings.task_cfg),
        optimizer=settings.optimizer,
        fixed_hparams={k: v for k, v in base.items() if k not in space},
        space=space_as_data(space),
        objective=settings.objective,
        objective_at=settings.objective_at,
        budget_steps=budget,
        seeds=list(range(settings.seeds)),
        eval_every=settings.eval_every or max(1, budget // 10),
        sampler=settings.sampler,
        sampler_seed=settings.sampler_seed,
        grid_points=settings.grid_points if settings.sampler == "grid" else 0,
        pruner=settings.pruner,
        tag=settings.tag,
    )
    return protocol, space, base


def make_sampler(protocol: Protocol, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per trial (:mod:`harness.tuning.sampler`)."""
    return build_sampler(protocol.sampler, protocol.sampler_seed, space, protocol.grid_points)


def make_pruner(protocol: Protocol) -> optuna.pruners.BasePruner:
    if protocol.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=5, n_warmup_steps=protocol.budget_steps // 4
    )


class TuningStopped(Exception):
    """``tune`` was asked to stop (its ``stop`` returned True) between two trials."""


def tune(
    settings: TuneSettings, log: Log = print, stop: Callable[[], bool] | None = None
) -> TuneOutcome:
    """Run (or continue) the study of ``settings``; see the module docstring.

    ``stop`` is asked before each new trial; when it returns True, :class:`TuningStopped` is
    raised with no trial in flight (the storage is then consistent, and rerunning continues).
    """
    protocol, space, base = prepare(settings)
    name = study_name(
        settings.task,
        settings.optimizer,
        settings.objective,
        protocol.budget_steps,
        settings.sampler,
        settings.tag,
        task_cfg=settings.task_cfg,
    )
    opened = open_storage(settings.storage, heartbeat=settings.heartbeat, stale_callback=requeue)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    me = worker_id()
    with opened.claim():
        study = load_or_create(
            opened.storage, name, protocol, make_sampler(protocol, space), make_pruner(protocol)
        )
    task = build_task(settings.task, settings.device, dict(settings.task_cfg))
    distributions = {n: dim.distribution() for n, dim in space.items()}
    with opened.claim():
        target = _target(study, settings)
        study.set_user_attr(ATTR_TRIALS, target)
        study.set_user_attr(ATTR_UNTIL, settings.until)
        recovered = recover_interrupted(study, opened.grace_s)
        if recovered:
            log(f"{name}: {recovered} interrupted trial(s) queued again")
        _queue_defaults(study, protocol, space, base, log)
        done = len(count_trials(study).counted)
    goal = f"until saturated, at most {target}" if settings.until == "saturated" else str(target)
    log(f"{name}: {done} trials done ({goal}), in {settings.storage}")
    ran = 0
    waiting = False
    # the ETA at the mean pace of the study's trials (every worker's); trials is only a cap when
    # the study stops once saturated
    eta = WeightedEta(target, done, cap=settings.until == "saturated")
    poll_s = min(2.0, settings.heartbeat / 2)
    while True:
        if stop is not None and stop():
            raise TuningStopped(f"{name}: stopped between trials, after {ran} in this run")
        with opened.claim():
            recovered = recover_interrupted(study, opened.grace_s)
            if recovered:
                log(f"{name}: {recovered} trial(s) of a lost worker queued again")
            counts = count_trials(study)
            if settings.until == "saturated" and _saturated_now(study, protocol, log):
                break
            target = int(study.user_attrs[ATTR_TRIALS])
            trial = None
            if counts.claimed < target:
                trial = _claim_trial(study, opened, distributions, target, me)
            elif not counts.in_flight:
                break
        if trial is None:  # the last trials run elsewhere: wait, to recover them if lost
            if not waiting:
                log(f"{name}: waiting for {len(counts.in_flight)} trial(s) of other workers")
            waiting = True
            time.sleep(poll_s)
            continue
        waiting = False
        eta.total = target
        _run_trial(study, trial, task, protocol, base, target, log, opened, eta)
        ran += 1
    counts = count_trials(study)
    trials = int(study.user_attrs[ATTR_TRIALS])
    best_runs = None
    complete = len(counts.counted) >= trials
    holder = _take_finish(study, opened, me) if complete else None
    if holder is not None:
        log(f"{name}: complete; worker {holder} finishes it (confirmation, re-evaluation, files)")
    elif complete:
        lease = Heartbeat(lambda: _renew_finish(study, me), settings.heartbeat)
        try:
            with lease:
                if settings.until == "saturated" and settings.confirm_seeds:
                    confirm_saturation(
                        study,
                        task,
                        protocol,
                        base,
                        trials,
                        settings.confirm_seeds,
                        opened,
                        log,
                        stop=stop,
                    )
                best = chosen_trial(study, trials)
                if best is not None and settings.eval_seeds:
                    best_runs = evaluate_best(study, name, best, protocol, settings, trials, log)
                export_study(study, name, trials, Path(settings.out) / name)
        finally:  # stopped part-way too: the next run (or another worker) finishes it
            with opened.claim():
                study.set_user_attr(ATTR_FINISHER, {})
    best = chosen_trial(study, trials)
    return TuneOutcome(
        study=name,
        counted=min(len(counts.counted), trials),
        ran=ran,
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_hparams=None if best is None else json.loads(best.user_attrs["hparams"]),
        best_runs=best_runs,
        saturation=study_saturation(study, min(len(counts.counted), trials)),
    )


def _claim_trial(
    study: optuna.Study,
    opened: OpenedStorage,
    distributions: dict[str, Any],
    target: int,
    me: str,
) -> optuna.Trial | None:
    """Ask for a trial (call it holding the claim lock): its first heartbeat, then its worker.

    On a storage whose claims are not exclusive, two workers may both have asked for the last
    trial: the one whose trial is not among the first ``target`` claimed ones by number drops
    it (marked surplus, never run) and returns None, so the study counts exactly ``target``.
    """
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        trial = study.ask(distributions)
    opened.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", me)
    trial.set_user_attr(ATTR_HEARTBEAT, opened.heartbeat)
    if not opened.exclusive:
        counts = count_trials(study)
        first = sorted(t.number for t in counts.counted + counts.in_flight)[:target]
        if trial.number not in first:
            study.set_user_attr(surplus_key(trial.number), True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
    return trial


def _take_finish(study: optuna.Study, opened: OpenedStorage, me: str) -> str | None:
    """Take the study's finishing lease (None), unless another live worker holds it (its id).

    The lease is renewed every heartbeat while its holder works (:func:`_renew_finish`); one
    not renewed for the grace period was left by a lost worker and is taken over."""
    with opened.claim():
        held = study.user_attrs.get(ATTR_FINISHER) or {}
        grace = opened.grace_s or 0.0
        if held.get("worker") not in (None, me) and time.time() - held["beat"] <= grace:
            return str(held["worker"])
        _renew_finish(study, me)
        return None


def _renew_finish(study: optuna.Study, me: str) -> None:
    study.set_user_attr(ATTR_FINISHER, {"worker": me, "beat": time.time()})


def _target(study: optuna.Study, settings: TuneSettings) -> int:
    """The study's trial count for this run: ``trials`` (never below what the study already
    asked for), or, for ``until=saturated``, the count at which it already saturated."""
    stored = int(study.user_attrs.get(ATTR_TRIALS, 0))
    if settings.until == "saturated" and stored and study.user_attrs.get(ATTR_UNTIL) == "saturated":
        first = counted_trials(study, stored)
        if len(first) == stored and study_saturation(study, stored).saturated:
            return stored
    return max(settings.trials, stored)


def _saturated_now(study: optuna.Study, protocol: Protocol, log: Log) -> bool:
    """Whether the counted trials so far meet the saturation rule; if so the study's trial count
    becomes their number (call it holding the claim lock)."""
    stored = int(study.user_attrs[ATTR_TRIALS])
    counted = counted_trials(study, stored)
    verdict = saturation_verdict(trial_values(counted), protocol.objective)
    if not verdict.saturated:
        return False
    if len(counted) < stored:
        study.set_user_attr(ATTR_TRIALS, len(counted))
        log(f"{study.study_name}: {verdict.verdict}, after {len(counted)} trials")
    return True


def confirm_saturation(
    study: optuna.Study,
    task: Any,
    protocol: Protocol,
    base: dict[str, Any],
    trials: int,
    seeds: int,
    opened: OpenedStorage,
    log: Log,
    stop: Callable[[], bool] | None = None,
) -> Saturation:
    """The study's verdict at ``trials`` counted trials; when the values alone fail the rule,
    first re-run the halves' best configurations on ``seeds`` fresh seeds and store them as the
    study's :class:`~harness.tuning.saturation.Confirmation` (kept when it already holds one of
    these trials). See :mod:`harness.tuning.saturation`.

    Each re-run's value is stored as it finishes (user attribute :data:`ATTR_CONFIRMING`), so a
    stopped or killed confirmation resumes with the runs it lacks; ``stop`` is asked before each
    run (:class:`TuningStopped` when it returns True)."""
    counted = counted_trials(study, trials)
    verdict = study_saturation(study, trials)
    first, second = halves_best(counted)
    if (
        verdict.saturated
        or len(counted) < verdict.min_trials
        or first is None
        or second is None
        or stored_confirmation(study, counted) is not None
    ):
        return verdict
    fresh = [CONFIRM_SEED_OFFSET + k for k in range(seeds)]
    log(
        f"{study.study_name}: {verdict.verdict}; re-running trials {first.number} and "
        f"{second.number} (the halves' bests) on seeds {fresh[0]}..{fresh[-1]}"
    )

    key = {"trials": len(counted), "first": first.number, "second": second.number, "seeds": fresh}
    partial = study.user_attrs.get(ATTR_CONFIRMING) or {}
    done: dict[str, list[float]] = (
        {"first": list(partial["first_values"]), "second": list(partial["second_values"])}
        if partial.get("key") == key
        else {"first": [], "second": []}
    )
    if any(done.values()):
        log(f"{study.study_name}: {sum(map(len, done.values()))} re-runs already stored")

    def rerun(which: str, trial: optuna.trial.FrozenTrial) -> list[float]:
        hparams = json.loads(trial.user_attrs["hparams"])
        values = done[which]
        for seed in fresh[len(values) :]:
            if stop is not None and stop():
                raise TuningStopped(f"{study.study_name}: stopped during the confirmation")
            one_seed = dataclasses.replace(protocol, seeds=[seed])
            try:
                values.append(evaluate_configuration(task, one_seed, hparams))
            except TrialDiverged as exc:
                values.append(exc.penalty)
            with opened.claim():
                study.set_user_attr(
                    ATTR_CONFIRMING,
                    {
                        "key": key,
                        "first_values": done["first"],
                        "second_values": done["second"],
                    },
                )
        return values

    confirmation = Confirmation(
        trials=len(counted),
        first_trial=first.number,
        second_trial=second.number,
        seeds=fresh,
        first_values=rerun("first", first),
        second_values=rerun("second", second),
    )
    with opened.claim():
        study.set_user_attr(ATTR_CONFIRMATION, confirmation.as_dict())
        study.set_user_attr(ATTR_CONFIRMING, {})
    verdict = study_saturation(study, trials)
    log(f"{study.study_name}: {verdict.verdict}")
    return verdict


def _queue_defaults(
    study: optuna.Study, protocol: Protocol, space: SearchSpace, base: dict[str, Any], log: Log
) -> None:
    """Queue the optimizer's defaults as the first trial, once per study (not for grids)."""
    if protocol.sampler == "grid" or study.user_attrs.get(ATTR_DEFAULTS_QUEUED):
        return
    defaults = {name: base[name] for name in space}
    outside = [
        name
        for name, dim in space.items()
        if dim.kind != "bool" and not dim.low <= defaults[name] <= dim.high
    ]
    if outside:
        log(f"not queueing the defaults: {', '.join(outside)} outside the searched range")
    else:
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
    study.set_user_attr(ATTR_DEFAULTS_QUEUED, True)


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    task: Any,
    protocol: Protocol,
    base: dict[str, Any],
    trials: int,
    log: Log,
    opened: OpenedStorage,
    eta: WeightedEta | None = None,
) -> None:
    """Run one claimed trial, its heartbeat beating, tell its outcome and log it (with the
    study's ETA: :class:`harness.progress.WeightedEta`). Stopped part-way (Ctrl-C, an error),
    it re-queues its trial before the exception goes on. A trial whose heartbeat was judged
    stale meanwhile (its retry is someone else's now) is not told."""
    hparams = {**base, **trial.params}
    trial.set_user_attr("hparams", canonical_json(hparams))
    shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    started = time.perf_counter()
    state, value, outcome = optuna.trial.TrialState.COMPLETE, None, ""
    try:
        with Heartbeat(lambda: opened.record_heartbeat(trial._trial_id), opened.heartbeat):
            value = evaluate_configuration(task, protocol, hparams, trial)
    except optuna.TrialPruned as exc:
        state, outcome = optuna.trial.TrialState.PRUNED, f"pruned ({exc})"
    except optuna.exceptions.UpdateFinishedTrialError:
        # a report found the trial finished: another worker failed it as stale (its heartbeat
        # was lost) and re-queued it; the tell below finds it finished and says so
        state, outcome = optuna.trial.TrialState.FAIL, "taken over"
    except TrialDiverged as exc:
        trial.set_user_attr("fail_reason", str(exc))  # "diverged at step ..."
        if math.isfinite(exc.penalty):
            trial.set_user_attr(ATTR_DIVERGED, True)
            value = exc.penalty
            outcome = f"{exc}; penalty {protocol.objective} {exc.penalty:.5g}"
        else:  # nothing finite to tell the sampler
            state, outcome = optuna.trial.TrialState.FAIL, f"failed: {exc}"
    except BaseException:
        with opened.claim():
            if fail_once(study._storage, trial._trial_id):
                requeue(study, study._storage.get_trial(trial._trial_id))
        raise
    else:
        outcome = f"{protocol.objective} {value:.5g}"
    try:
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        log(f"[trial {trial.number}] its heartbeat was lost and another worker re-queued it")
        return
    counted = len(count_trials(study).counted)
    left = ""
    if eta is not None:
        eta.observe(counted)
        left = f"; {eta.text()}"
    log(
        f"[trial {trial.number}, {counted}/{trials} done] {shown}: "
        f"{outcome} ({time.perf_counter() - started:.1f} s){left}"
    )


def evaluate_best(
    study: optuna.Study,
    name: str,
    best: optuna.trial.FrozenTrial,
    protocol: Protocol,
    settings: TuneSettings,
    trials: int,
    log: Log,
) -> Path:
    """Train the best configuration with fresh seeds; its tidy rows, tagged, in ``best_runs.csv``.

    Skipped (the file is kept) when it already holds this trial's re-evaluation.
    """
    out = Path(settings.out) / name / "best_runs.csv"
    fresh_mean = fresh_seed_mean(study, trials, best.number)
    tags = tuning_tags(name, best, trials, protocol, fresh_mean=fresh_mean)
    if out.is_file():
        existing = read_results(out)
        if (
            set(existing["tags"]) == {canonical_json(tags)}
            and existing.seed.nunique() == settings.eval_seeds
        ):
            return out
    log(
        f"{name}: best trial {best.number} ({protocol.objective} {best.value:.5g}); training it "
        f"with {settings.eval_seeds} fresh seeds"
    )
    plans = [
        RunPlan(
            task=protocol.task,
            optimizer=protocol.optimizer,
            seed=EVAL_SEED_OFFSET + k,
            suite=f"tune:{name}",
            steps=protocol.budget_steps,
            hparams=json.loads(best.user_attrs["hparams"]),
            task_cfg=settings.task_cfg,
            device=settings.device,
            tags=tags,
        )
        for k in range(settings.eval_seeds)
    ]
    execute(plans, out)
    return out


def tuning_tags(
    name: str,
    best: optuna.trial.FrozenTrial,
    trials: int,
    protocol: Protocol,
    saturation: Saturation | None = None,
    fresh_mean: float | None = None,
) -> dict[str, Any]:
    """The provenance every row produced from a tuned configuration carries (``saturated`` and
    ``saturation``: the study's verdict under the saturation rule, so every report that uses the
    study can flag it when it is not saturated; ``selected_by``: ``"value"``, or
    ``"fresh seeds"`` where ``best`` was chosen by the confirmation's re-runs, whose mean is then
    ``fresh_seed_mean``; see :func:`~harness.tuning.saturation.chosen_trial`)."""
    tags: dict[str, Any] = {
        "study": name,
        "trial": best.number,
        "trials": trials,
        "tuning_budget_steps": protocol.budget_steps,
        "objective": protocol.objective,
        "objective_value": best.value,
        "tuning_seeds": len(protocol.seeds),
        "sampler": protocol.sampler,
    }
    if fresh_mean is not None:
        tags["selected_by"] = "fresh seeds"
        tags["fresh_seed_mean"] = fresh_mean
    if saturation is not None:
        tags["saturated"] = saturation.saturated
        tags["saturation"] = saturation.verdict
    return tags


def export_study(study: optuna.Study, name: str, trials: int, folder: Path) -> list[Path]:
    """``trials.csv``, ``best_so_far.png`` and ``objective_vs_lr.png`` of one study into
    ``folder``."""
    frame = trials_frame(study, trials)
    written = [write_trials(frame, folder / "trials.csv")]
    written.append(plot_best_so_far(study, trials, folder / "best_so_far.png"))
    if "param_lr" in frame.columns:
        written.append(plot_objective_vs_lr(frame, folder / "objective_vs_lr.png", title=name))
    return written


def tuned_configuration(
    *,
    task: str,
    optimizer: str,
    objective: str,
    budget_steps: int,
    sampler: str = "tpe",
    tag: str = "",
    storage: str = DEFAULT_STORAGE,
    task_cfg: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, tags)`` of the chosen trial of a complete study (the best value, or the
    better of the confirmation's re-runs: :func:`~harness.tuning.saturation.chosen_trial`), for
    ``lopt bench tuned=true``.

    The study is the one of the newest protocol version that ``storage`` holds (so studies made
    under an earlier protocol, e.g. ``...-p1``, stay usable until they are redone; the tags name
    the study used). ``task_cfg`` (the run's task settings) must agree with those the study was
    tuned on: a learning rate tuned on one data split or batch size is not the tuned one for
    another. ``UsageError`` naming the ``lopt tune`` command that creates (or finishes) the study.
    """
    member = (task_cfg or {}).get("member") if study_task(task, task_cfg) != task else None
    command = (
        f"lopt tune task={task} optimizer={optimizer} objective={objective} "
        f"budget_steps={budget_steps} sampler={sampler}"
        + (f" task.member={member}" if member is not None else "")
        + (f" tag={tag}" if tag else "")
        + (f" storage={storage}" if storage != DEFAULT_STORAGE else "")
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(task, optimizer, objective, budget_steps, sampler, tag, task_cfg=task_cfg)
    try:
        opened: OpenedStorage = open_storage(storage, create=False)
    except UsageError as exc:
        raise UsageError(
            f"{exc}; {existing_studies(task, optimizer, storage)}create the study with "
            f"`{command} trials=N`"
        ) from None
    study = None
    for version in range(PROTOCOL_VERSION, 0, -1):
        study = load_existing(
            opened.storage,
            study_name(
                task, optimizer, objective, budget_steps, sampler, tag, version, task_cfg=task_cfg
            ),
        )
        if study is not None:
            name = study.study_name
            break
    if study is None:
        raise UsageError(
            f"no tuning study {name!r} in {storage}; "
            f"{existing_studies(task, optimizer, storage)}create it with `{command} trials=N`"
        )
    trials = int(study.user_attrs.get(ATTR_TRIALS, 0))
    counted = len(count_trials(study).counted)
    if counted < trials:
        until = " until=saturated" if study.user_attrs.get(ATTR_UNTIL) == "saturated" else ""
        raise UsageError(
            f"tuning study {name!r} has {counted} of its {trials} trials: finish it with "
            f"`{command}{until} trials={trials}`"
        )
    best = chosen_trial(study, trials)
    if best is None:
        raise UsageError(f"tuning study {name!r} has no completed trial: every trial failed")
    protocol = Protocol(**stored_protocol(study))
    if task_cfg is not None:
        wanted = task_config(TASKS.get(task).factory, dict(task_cfg))
        differ = sorted(
            key
            for key in set(wanted) & set(protocol.task_cfg)
            if wanted[key] != protocol.task_cfg[key]
        )
        if differ:
            key = differ[0]
            raise UsageError(
                f"tuning study {name!r} was tuned with task.{key}={protocol.task_cfg[key]!r}, "
                f"but the run has task.{key}={wanted[key]!r}: use the study's settings, or tune "
                f"for these (a tag= keeps both studies)"
            )
    saturation = study_saturation(study, trials)
    tags = tuning_tags(
        name, best, trials, protocol, saturation, fresh_seed_mean(study, trials, best.number)
    )
    return json.loads(best.user_attrs["hparams"]), tags


#: where the studies the repository ships are looked for (from the working directory, then the
#: checkout this package runs from), to name them when a look-up fails
SHIPPED_STORAGES = (
    Path("results/paper/optuna.db"),
    Path(__file__).resolve().parents[2] / "results" / "paper" / "optuna.db",
)
_SHOWN = 4


def existing_studies(task: str, optimizer: str, storage: str) -> str:
    """The studies of ``task`` and ``optimizer`` in ``storage`` and the shipped storages, each
    with the settings that select it (``"studies of ...: NAME (tuning.KEY=VALUE ...); "``), or
    ``""`` when there is none. Reads only: nothing is created."""
    urls = [storage]
    seen = set()
    if storage.startswith("sqlite:///"):
        seen.add(Path(storage[len("sqlite:///") :]).expanduser().resolve())
    for path in SHIPPED_STORAGES:
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            urls.append(f"sqlite:///{path}")
    found = []
    for url in urls:
        try:
            opened = open_storage(url, create=False)
            studies = opened.storage.get_all_studies()
        except Exception:  # a storage that cannot be read has nothing to suggest
            continue
        for study in studies:
            protocol = json.loads(study.user_attrs.get(ATTR_PROTOCOL, "{}"))
            if (protocol.get("task"), protocol.get("optimizer")) != (task, optimizer):
                continue
            task_cfg = protocol.get("task_cfg") or {}
            member = (
                {"member": task_cfg.get("member")} if study_task(task, task_cfg) != task else {}
            )
            keys = {
                **{f"task.{k}": v for k, v in member.items()},
                "objective": protocol["objective"],
                "budget_steps": protocol["budget_steps"],
                "sampler": protocol["sampler"],
                "tag": protocol.get("tag") or "",
                "storage": url,
            }
            shown = " ".join(
                f"{k}={v}" if k.startswith("task.") else f"tuning.{k}={v}"
                for k, v in keys.items()
                if v != ""
            )
            found.append(f"{study.study_name} ({shown})")
    if not found:
        return ""
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return f"studies of {task} {optimizer} that exist: {'; '.join(found[:_SHOWN])}{more}; or "


def load_studies(storage: str) -> list[optuna.Study]:
    """Every study in ``storage``, by name; ``UsageError`` if there is none. Writes nothing."""
    opened = open_storage(storage, create=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = sorted(optuna.get_all_study_names(opened.storage))
    if not names:
        raise UsageError(f"no tuning studies in {storage}")
    return [optuna.load_study(study_name=name, storage=opened.storage) for name in names]


def studies_frame(storage: str) -> pd.DataFrame:
    """The trials of every study in ``storage`` (see :func:`trials_frame`)."""
    frames = [
        trials_frame(study, int(study.user_attrs.get(ATTR_TRIALS, 0)))
        for study in load_studies(storage)
    ]
    return pd.concat(frames, ignore_index=True)
