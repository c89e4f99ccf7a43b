"""Suites: a file of (task, optimizer) pairs with budgets, seeds and settings, run as one.

A suite file (``harness/conf/suite/NAME.yaml``, typed by
:class:`harness.settings.suite.SuiteFile`) lists its runs; each entry may

* set ``hparams`` (else the optimizer's defaults), or ``tuned: true``: take them from the best
  trial of the entry's tuning study (the suite's ``tuning`` block, updated by the entry's own
  ``tuning``), whose provenance then tags every row;
* add ``tags`` (e.g. ``comparison: train`` for a comparison report);
* for a task family, give ``members`` (member seeds): the entry runs once per member, each with
  ``task.member`` set and, when tuned, its own study (``harness/conf/suite/family.yaml``);
* for a learned optimizer, give ``meta_train`` (a ``lopt meta-train`` configuration): how its
  checkpoint is made when the suite is run with ``fresh=true``; a curriculum lists its earlier
  stages under ``meta_train.before`` (each a configuration; every stage starts at the previous
  stage's checkpoint, ``init_from``, and the last stage is the rest of ``meta_train``).

``optional_tasks`` are skipped, with a notice, when their data is not on the machine (a
Fashion-MNIST suite still runs its MNIST part). A skipped task's results are never lost: the
rows of its runs in the results file being replaced (same run ids: the same definition) are
kept in the new file, their ``tags`` marked ``not_reproduced``; rows of the task that no run
of this suite would make are written aside to ``<out stem>.not-rerun<suffix>``. The report says
which tasks were not rerun and why, the run's last lines say it again, and
:attr:`SuiteOutcome.complete` is False (``lopt suite`` then exits with code 3). ``fresh=true``
redoes everything a suite normally takes from the repository: every tuning study (in
``<out>/fresh/optuna.db``, by the retuning protocol of :mod:`harness.tuning.campaign`, capped at
the suite's ``tuning.trials``) and every meta-training (in ``<out>/fresh/meta/<optimizer>``);
the runs then use those. ``reuse=true`` keeps the runs the results file already has (the same
run ids) and runs only the others, e.g. the entries added to the suite file since.

:func:`run_suite` returns a :class:`SuiteOutcome`: the tidy table it wrote and the tasks it
skipped; the report (``report: standard`` or ``comparison``) is written next to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.defaults import WARMUP_STEPS
from harness.errors import DatasetUnavailableError, UsageError
from harness.plan import RunPlan, execute, resolve_plans
from harness.progress import Log
from harness.registry import TASKS, create_task
from harness.results.io import read_results, write_results
from harness.results.report import NOT_REPRODUCED_TAG
from harness.results.schema import canonical_json
from harness.settings.bench import TuningRef
from harness.settings.suite import SuiteEntry, check_suite_file, suite_entries
from harness.util import to_plain


@dataclass
class SuiteRun:
    """How to run a suite: the command's settings (see
    :class:`harness.settings.suite.SuiteConfig`)."""

    suite: DictConfig
    seeds: int
    device: str = "cpu"
    warmup_steps: int = WARMUP_STEPS
    out: Path | None = None
    report: bool = True
    reference: str | None = None
    resume: bool = True
    reuse: bool = False
    fresh: bool = False
    workers: int = 1
    plugin_modules: tuple[str, ...] | list[str] = ()
    max_seconds: float | None = None

    @property
    def results_path(self) -> Path:
        return self.out or Path("results") / self.suite.name / "results.csv"

    @property
    def fresh_dir(self) -> Path:
        return self.results_path.parent / "fresh"


@dataclass
class SkippedTask:
    """A task the suite could not run here, and what became of its earlier results."""

    task: str
    reason: str
    runs: int  # the runs the suite has for the task
    kept_runs: int = 0  # of those, how many have their earlier rows kept in the results file
    aside: Path | None = None  # where other earlier rows of the task were written

    def line(self, results: Path) -> str:
        kept = (
            f"the earlier rows of {self.kept_runs} of its {self.runs} runs are kept in "
            f"{results}, tagged {NOT_REPRODUCED_TAG}"
            if self.kept_runs
            else f"none of its {self.runs} runs had earlier rows in {results} to keep"
        )
        aside = f"; its other earlier rows are in {self.aside}" if self.aside else ""
        return f"NOT reproduced: {self.task} (skipped: {self.reason}); {kept}{aside}"


@dataclass
class SuiteOutcome:
    """What :func:`run_suite` did: the table it wrote and the tasks it could not run."""

    frame: pd.DataFrame
    results: Path
    skipped: list[SkippedTask] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every task of the suite was run."""
        return not self.skipped


def run_suite(settings: SuiteRun, log: Log) -> SuiteOutcome:
    """Run the suite (see the module docstring)."""
    suite = settings.suite
    check_suite_file(suite)
    if settings.reuse and settings.fresh:
        raise UsageError(
            "reuse=true keeps earlier runs and fresh=true redoes the suite from scratch; "
            "give one of them"
        )
    if settings.reuse and not settings.resume:
        raise UsageError("reuse=true keeps earlier runs, which resume=false discards; drop one")
    entries, unavailable = available_entries(suite, log)
    if settings.fresh:
        prepare_fresh(settings, entries, log)
    plans = [plan for entry in entries for plan in entry_plans(settings, entry)]
    check_fair_tuning(suite.name, plans)
    planned = resolve_plans(plans)  # bad input fails before anything is written aside
    skipped_entries = [e for e in suite_entries(suite) if e.task in unavailable]
    keep, skipped = earlier_rows(settings, skipped_entries, unavailable)
    if settings.reuse:
        reuse_earlier_runs(settings.results_path, [p.run_id for p in planned], log)
    frame = execute(
        planned,
        settings.results_path,
        resume=settings.resume,
        workers=settings.workers,
        plugin_modules=settings.plugin_modules,
        keep=keep,
        max_seconds=settings.max_seconds,
    )
    if settings.report:
        folder = settings.results_path.parent
        reasons = {item.task: item.reason for item in skipped}
        if suite.report == "comparison":
            from harness.results.comparison import build_comparison_report

            storage = fresh_storage(settings) if settings.fresh else suite.tuning.get("storage")
            written = build_comparison_report(frame, folder, skipped=reasons, storage=storage)
        else:
            from harness.results.report import build_report

            written = build_report(frame, folder, reference=settings.reference, skipped=reasons)
        log(f"report: {len(written)} files in {folder}")
    for item in skipped:
        log(item.line(settings.results_path))
    return SuiteOutcome(frame=frame, results=settings.results_path, skipped=skipped)


def reuse_earlier_runs(results: Path, run_ids: list[str], log: Log) -> int:
    """Save the rows of every run in ``results`` whose id is in ``run_ids`` where
    :func:`harness.plan.execute` looks for finished runs (``<results>.parts/``, unless a run is
    there already), so that it runs only the others; returns how many were reused."""
    from harness.plan import parts_dir

    if not results.is_file():
        log(f"reuse: no earlier results in {results}; running every run")
        return 0
    previous = read_results(results)
    wanted = previous[previous["run_id"].isin(set(run_ids))]
    parts = parts_dir(results)
    parts.mkdir(parents=True, exist_ok=True)
    count = 0
    for run_id, rows in wanted.groupby("run_id", sort=False):
        target = parts / f"{run_id}.csv"
        if not target.exists():
            write_results(rows, target)
        count += 1
    log(f"reuse: {count} of the suite's {len(set(run_ids))} runs are kept from {results}")
    return count


def available_entries(suite: DictConfig, log: Log) -> tuple[list[SuiteEntry], dict[str, str]]:
    """The suite's entries, without those of optional tasks whose data is missing here, and
    the missing tasks with the reason."""
    entries = suite_entries(suite)
    missing: dict[str, str] = {}
    for task in sorted(set(suite.optional_tasks)):
        TASKS.get(task)
        try:
            create_task(task)
        except DatasetUnavailableError as exc:
            log(f"skipping {task}: {exc}")
            missing[task] = str(exc)
    kept = [entry for entry in entries if entry.task not in missing]
    if not kept:
        raise UsageError(f"suite {suite.name!r}: no run is left once unavailable tasks are skipped")
    return kept, missing


def earlier_rows(
    settings: SuiteRun, entries: list[SuiteEntry], unavailable: dict[str, str]
) -> tuple[pd.DataFrame | None, list[SkippedTask]]:
    """The rows of the results file being replaced that belong to the skipped tasks' runs
    (tagged :data:`NOT_REPRODUCED_TAG`), and what became of each skipped task's results; rows
    of a skipped task that match none of its runs are written aside (see the module doc)."""
    path = settings.results_path
    previous = read_results(path) if unavailable and path.is_file() else None
    kept, skipped, aside = [], [], []
    for task, reason in sorted(unavailable.items()):
        try:
            ids = {p.run_id() for e in entries if e.task == task for p in entry_plans(settings, e)}
        except UsageError:  # e.g. fresh=true: the task's fresh studies were never made
            ids = set()
        item = SkippedTask(task=task, reason=reason, runs=len(ids))
        if previous is not None:
            rows = previous[previous["task"] == task]
            matched = rows["run_id"].isin(ids)
            if matched.any():
                kept.append(rows[matched].assign(tags=rows.loc[matched, "tags"].map(_marked)))
                item.kept_runs = rows.loc[matched, "run_id"].nunique()
            if (~matched).any():
                aside.append(rows[~matched])
                item.aside = path.with_name(f"{path.stem}.not-rerun{path.suffix}")
        skipped.append(item)
    if aside:
        write_results(
            pd.concat(aside, ignore_index=True),
            path.with_name(f"{path.stem}.not-rerun{path.suffix}"),
        )
    return (pd.concat(kept, ignore_index=True) if kept else None), skipped


def _marked(tags: str) -> str:
    """``tags`` (JSON) with the :data:`NOT_REPRODUCED_TAG` mark."""
    data = json.loads(tags) if isinstance(tags, str) and tags else {}
    return canonical_json({**data, NOT_REPRODUCED_TAG: "data unavailable when the suite was rerun"})


def tuning_for(suite: DictConfig, entry: SuiteEntry) -> DictConfig:
    """The suite's ``tuning`` block updated by the entry's own (checked against TuningRef)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TuningRef), suite.tuning, dict(entry.tuning))
    except Exception as exc:  # OmegaConf validation errors
        raise UsageError(
            f"suite {suite.name!r}, {entry.task}/{entry.optimizer}: bad tuning block ({exc})"
        ) from exc


def entry_plans(settings: SuiteRun, entry: SuiteEntry) -> list[RunPlan]:
    """The runs of one entry, one per seed."""
    suite = settings.suite
    optimizer, hparams, tags = entry.optimizer, dict(entry.hparams), dict(entry.tags)
    if entry.tuned:
        if hparams:
            raise UsageError(
                f"suite {suite.name!r}: the {entry.task}/{entry.optimizer} run is tuned, so it "
                "takes its hparams from the tuning study: drop its hparams"
            )
        tuning = tuning_for(suite, entry)
        if settings.fresh:
            tuning.storage = fresh_storage(settings)
        hparams, tuning_tags = tuned_hparams(
            entry.task, entry.optimizer, tuning, entry.steps, dict(entry.task_cfg)
        )
        tags = {**tuning_tags, **tags}
    elif settings.fresh and entry.meta_train:
        optimizer, hparams = "lopt", {"checkpoint": str(fresh_checkpoint(settings, entry))}
    return [
        RunPlan(
            task=entry.task,
            optimizer=optimizer,
            seed=seed,
            suite=suite.name,
            steps=entry.steps,
            hparams=hparams,
            task_cfg=dict(entry.task_cfg),
            eval_every=suite.eval_every,
            log_every=suite.log_every,
            warmup_steps=settings.warmup_steps,
            device=settings.device,
            tags=tags,
        )
        for seed in range(suite.first_seed, suite.first_seed + settings.seeds)
    ]


def tuned_hparams(
    task: str,
    optimizer: str,
    tuning: DictConfig,
    steps: int | None,
    task_cfg: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tuned hyperparameters and their provenance tags (see harness.tuning.tuner)."""
    from harness.tuning.tuner import tuned_configuration

    budget = tuning.budget_steps or steps or TASKS.get(task).factory.default_steps
    return tuned_configuration(
        task=task,
        optimizer=optimizer,
        objective=tuning.objective,
        budget_steps=budget,
        sampler=tuning.sampler,
        tag=tuning.tag,
        storage=tuning.storage,
        task_cfg=task_cfg or {},
    )


# -- fresh=true ------------------------------------------------------------------------------------
def fresh_storage(settings: SuiteRun) -> str:
    return f"sqlite:///{settings.fresh_dir / 'optuna.db'}"


def fresh_checkpoint(settings: SuiteRun, entry: SuiteEntry) -> Path:
    from harness.meta.trainer import LOPT_FILE

    return settings.fresh_dir / "meta" / entry.optimizer / LOPT_FILE


def prepare_fresh(settings: SuiteRun, entries: list[SuiteEntry], log: Log) -> None:
    """Run every tuning study and meta-training the suite's runs need, from scratch (each is
    resumable: rerunning continues what an interrupted ``fresh=true`` run left). The studies
    follow the retuning protocol of :mod:`harness.tuning.campaign` (until saturated, in rounds
    of growing caps up to the suite's ``tuning.trials``, each study with its own tag and tuning
    seeds), one campaign per sampler and cap."""
    from harness.meta.command import meta_train
    from harness.meta.trainer import LOPT_FILE
    from harness.tuning.campaign import Campaign, StudySpec, caps_up_to, run_campaign

    suite = settings.suite
    campaigns: dict[tuple[str, int], list[StudySpec]] = {}
    for entry in entries:
        if not entry.tuned:
            continue
        tuning = tuning_for(suite, entry)
        if tuning.trials is None:
            raise UsageError(
                f"suite {suite.name!r}: fresh=true needs tuning.trials (the hard cap of every "
                "baseline's study)"
            )
        spec = StudySpec.of_run(entry.task, entry.optimizer, entry.steps, entry.task_cfg, tuning)
        specs = campaigns.setdefault((tuning.sampler, int(tuning.trials)), [])
        if spec not in specs:
            specs.append(spec)
    for (sampler, cap), specs in campaigns.items():
        run_campaign(
            Campaign(
                specs=specs,
                tag=None,
                storage=fresh_storage(settings),
                out=str(settings.fresh_dir / "tuning"),
                caps=caps_up_to(cap),
                sampler=sampler,
                device=settings.device,
            ),
            log=log,
        )
    for entry in entries:
        if entry.meta_train and not entry.tuned:
            final = fresh_checkpoint(settings, entry).parent
            stages = meta_train_stages(entry.meta_train)
            previous: Path | None = None
            for k, stage in enumerate(stages):
                out = final if k == len(stages) - 1 else final / f"stage{k}"
                log(f"meta-training {entry.optimizer} into {out}")
                start = {"init_from": str(previous)} if previous is not None else {}
                meta_train(
                    {
                        **stage,
                        **start,
                        "task": entry.task,
                        "task_cfg": dict(entry.task_cfg),
                        "out": str(out),
                        "resume": True,
                    }
                )
                previous = out / LOPT_FILE


def meta_train_stages(meta_train: Any) -> list[dict[str, Any]]:
    """The meta-training configurations of a suite entry's ``meta_train``, in order: those
    listed under ``before``, then the rest of it (see the module docstring)."""
    plain = dict(to_plain(meta_train))
    before = plain.pop("before", None) or []
    if not isinstance(before, list | tuple) or not all(
        isinstance(stage, Mapping) for stage in before
    ):
        raise UsageError("meta_train.before must be a list of meta-training configurations")
    return [*(dict(stage) for stage in before), plain]


def check_fair_tuning(suite: str, plans: list[RunPlan]) -> None:
    """Tuned baselines of one task must come from studies tuned under the same rule: the same
    step budget, and either the same trial count or saturated with fewer.

    A study that met the saturation rule (``harness.tuning.saturation``) stopped because more
    trials stopped paying, so it is not tuned less than one that needed more trials to get there,
    or that reached the cap without saturating; comparing a baseline saturated at 44 trials with
    one stopped at a cap of 128 is therefore fair, while one stopped at 16 trials without the
    rule against one at 128 is not. So per task: every study with fewer trials than the task's
    largest count must be saturated (the ``saturated`` tag of :func:`tuned_configuration`).
    And per task and objective (one comparison): every study averaged its objective over the
    same number of tuning seeds (``tuning_seeds``), since more seeds choose with less noise."""
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for plan in plans:
        if "study" in plan.tags:
            by_task.setdefault(plan.task, {})[plan.tags["study"]] = plan.tags
    for task, studies in by_task.items():
        steps = sorted({int(tags["tuning_budget_steps"]) for tags in studies.values()})
        if len(steps) > 1:
            shown = ", ".join(f"{b} steps" for b in steps)
            raise UsageError(
                f"suite {suite!r}: the tuned runs on {task} come from studies with different "
                f"tuning budgets ({shown}); tune every baseline with the same budget_steps"
            )
        largest = max(int(tags["trials"]) for tags in studies.values())
        short = sorted(
            (int(tags["trials"]), name)
            for name, tags in studies.items()
            if int(tags["trials"]) < largest and tags.get("saturated") is not True
        )
        if short:
            trials, name = short[0]
            raise UsageError(
                f"suite {suite!r}: the tuned runs on {task} come from studies with different "
                f"tuning budgets: {name} has {trials} trials and is not saturated, others have "
                f"{largest}; tune it until=saturated trials={largest}, or every baseline with "
                "the same trials"
            )
        check_equal_tuning_seeds(suite, task, studies)


def check_equal_tuning_seeds(suite: str, task: str, studies: dict[str, dict[str, Any]]) -> None:
    """The studies of one task and objective (``studies``: name -> tags) used the same number of
    tuning seeds; studies tagged before ``tuning_seeds`` existed are not compared."""
    by_objective: dict[str, dict[int, str]] = {}
    for name, tags in sorted(studies.items()):
        if "tuning_seeds" in tags:
            seeds = by_objective.setdefault(str(tags.get("objective")), {})
            seeds[int(tags["tuning_seeds"])] = name
    for objective, names in by_objective.items():
        if len(names) > 1:
            shown = ", ".join(f"{name} {n}" for n, name in sorted(names.items()))
            raise UsageError(
                f"suite {suite!r}: the {objective} baselines on {task} were tuned with different "
                f"numbers of tuning seeds ({shown}); tune them all with the same seeds="
            )
