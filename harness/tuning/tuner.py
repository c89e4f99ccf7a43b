"""The tuning loop, the re-evaluation of the winner, and the lookup of tuned configurations.

:func:`tune` runs a study until it holds ``trials`` counted trials (see
:mod:`harness.tuning.study`), or, with ``until="saturated"``, until the study meets the saturation
rule (:mod:`harness.tuning.saturation`) with ``trials`` as the cap; then the study's trial count
becomes the count at which it saturated. It works with any other process tuning the same study
on the same storage: each trial is claimed under the storage's lock, so together they run exactly
the trials needed, and a rerun after a crash or ``kill -9`` runs only the missing ones. The
optimizer's default hyperparameters are queued as the first trial (except for the grid sampler,
whose points are the whole design). A diverged trial completes with a penalty value (see
:mod:`harness.tuning.objective`), so the sampler learns to avoid where runs diverge.

When the study is complete, the best configuration is trained again with ``eval_seeds`` fresh
seeds (``EVAL_SEED_OFFSET + k``; the tuning seeds are ``0 .. seeds-1``), with whole-split
evaluations, and written as tidy rows (``OUT/<study>/best_runs.csv``) whose ``tags`` name the
study, the trial, the trial count and the step budget. The study's trials and an
objective-against-learning-rate plot are written next to them.

Samplers are seeded, but Optuna does not store a sampler's random state, so a resumed study
samples differently from an uninterrupted one after the interruption (the trials already done
are kept as they were).
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
from harness.registry import OPTIMIZERS, TASKS, create_task
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
from harness.tuning.storage import OpenedStorage, open_storage
from harness.tuning.study import (
    ATTR_DEFAULTS_QUEUED,
    ATTR_DIVERGED,
    ATTR_TRIALS,
    ATTR_UNTIL,
    PROTOCOL_VERSION,
    Protocol,
    count_trials,
    counted_trials,
    load_existing,
    load_or_create,
    recover_interrupted,
    space_as_data,
    stored_protocol,
    study_name,
    worker_id,
)
from optimizers.base import resolve_hparams
from tasks.base import task_config

EVAL_SEED_OFFSET = 1000
Log = Callable[[str], None]


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
    seed = protocol.sampler_seed
    if protocol.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=len(space) > 1)
    if protocol.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if protocol.sampler == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3; stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="halton", scramble=True, seed=seed, warn_asynchronous_seeding=False
            )
    grid = {name: dim.grid(protocol.grid_points) for name, dim in space.items()}
    return _AskTellGridSampler(grid, seed=seed)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """A grid sampler for the ask-and-tell loop: the loop stops at ``trials`` (at most the grid's
    size), so the sampler must not call ``study.stop()`` (allowed only inside ``optimize``)."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        return None


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
    )
    opened = open_storage(settings.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with opened.claim():
        study = load_or_create(
            opened.storage, name, protocol, make_sampler(protocol, space), make_pruner(protocol)
        )
    task = create_task(settings.task, device=settings.device, **settings.task_cfg)
    distributions = {n: dim.distribution() for n, dim in space.items()}
    with opened.claim():
        target = _target(study, settings)
        study.set_user_attr(ATTR_TRIALS, target)
        study.set_user_attr(ATTR_UNTIL, settings.until)
        recovered = recover_interrupted(study)
        if recovered:
            log(f"{name}: {recovered} interrupted trial(s) queued again")
        _queue_defaults(study, protocol, space, base, log)
        done = len(count_trials(study).counted)
    goal = f"until saturated, at most {target}" if settings.until == "saturated" else str(target)
    log(f"{name}: {done} trials done ({goal}), in {settings.storage}")
    ran = 0
    while True:
        if stop is not None and stop():
            raise TuningStopped(f"{name}: stopped between trials, after {ran} in this run")
        with opened.claim():
            counts = count_trials(study)
            if settings.until == "saturated" and _saturated_now(study, protocol, log):
                break
            if counts.claimed >= target:
                break
            trial = study.ask(distributions)
            trial.set_user_attr("worker", worker_id())
        _run_trial(study, trial, task, protocol, base, target, log)
        ran += 1
    counts = count_trials(study)
    if counts.in_flight:
        log(f"{name}: {len(counts.in_flight)} trial(s) still running in other processes")
    trials = int(study.user_attrs[ATTR_TRIALS])
    best_runs = None
    complete = len(counts.counted) >= trials
    if settings.until == "saturated" and complete and settings.confirm_seeds:
        confirm_saturation(study, task, protocol, base, trials, settings.confirm_seeds, opened, log)
    best = chosen_trial(study, trials)
    if best is not None and complete and settings.eval_seeds:
        with opened.claim():
            best_runs = evaluate_best(study, name, best, protocol, settings, trials, log)
    if complete:
        export_study(study, name, trials, Path(settings.out) / name)
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
) -> Saturation:
    """The study's verdict at ``trials`` counted trials; when the values alone fail the rule,
    first re-run the halves' best configurations on ``seeds`` fresh seeds and store them as the
    study's :class:`~harness.tuning.saturation.Confirmation` (kept when it already holds one of
    these trials). See :mod:`harness.tuning.saturation`."""
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

    def rerun(trial: optuna.trial.FrozenTrial) -> list[float]:
        hparams = json.loads(trial.user_attrs["hparams"])
        values = []
        for seed in fresh:
            one_seed = dataclasses.replace(protocol, seeds=[seed])
            try:
                values.append(evaluate_configuration(task, one_seed, hparams))
            except TrialDiverged as exc:
                values.append(exc.penalty)
        return values

    confirmation = Confirmation(
        trials=len(counted),
        first_trial=first.number,
        second_trial=second.number,
        seeds=fresh,
        first_values=rerun(first),
        second_values=rerun(second),
    )
    with opened.claim():
        study.set_user_attr(ATTR_CONFIRMATION, confirmation.as_dict())
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
) -> None:
    hparams = {**base, **trial.params}
    trial.set_user_attr("hparams", canonical_json(hparams))
    shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    started = time.perf_counter()
    try:
        value = evaluate_configuration(task, protocol, hparams, trial)
    except optuna.TrialPruned as exc:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        outcome = f"pruned ({exc})"
    except TrialDiverged as exc:
        trial.set_user_attr("fail_reason", str(exc))  # "diverged at step ..."
        if math.isfinite(exc.penalty):
            trial.set_user_attr(ATTR_DIVERGED, True)
            study.tell(trial, exc.penalty)
            outcome = f"{exc}; penalty {protocol.objective} {exc.penalty:.5g}"
        else:  # nothing finite to tell the sampler
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            outcome = f"failed: {exc}"
    else:
        study.tell(trial, value)
        outcome = f"{protocol.objective} {value:.5g}"
    log(
        f"[trial {trial.number}, {len(count_trials(study).counted)}/{trials} done] {shown}: "
        f"{outcome} ({time.perf_counter() - started:.1f} s)"
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
    command = (
        f"lopt tune task={task} optimizer={optimizer} objective={objective} "
        f"budget_steps={budget_steps} sampler={sampler}"
        + (f" tag={tag}" if tag else "")
        + (f" storage={storage}" if storage != DEFAULT_STORAGE else "")
    )
    opened: OpenedStorage = open_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = None
    for version in range(PROTOCOL_VERSION, 0, -1):
        name = study_name(task, optimizer, objective, budget_steps, sampler, tag, version)
        study = load_existing(opened.storage, name)
        if study is not None:
            break
    if study is None:
        name = study_name(task, optimizer, objective, budget_steps, sampler, tag)
        raise UsageError(
            f"no tuning study {name!r} in {storage}: create it with `{command} trials=N`"
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


def load_studies(storage: str) -> list[optuna.Study]:
    """Every study in ``storage``, by name; ``UsageError`` if there is none."""
    opened = open_storage(storage)
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
