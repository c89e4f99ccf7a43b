"""``lopt suite``'s settings: the command (:class:`SuiteConfig`), the schema of a suite file
(:class:`SuiteFile`, ``harness/conf/suite/*.yaml``) and of each of its runs (:class:`SuiteEntry`,
checked by :func:`suite_entries`)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.defaults import LOG_EVERY, WARMUP_STEPS
from harness.errors import UsageError
from harness.settings.bench import TuningRef
from harness.settings.validate import MISSING, first_line

REPORTS = ("standard", "comparison")  # a suite file's report kinds

# Hydra's structured configs need typing.Optional/List/Dict (PEP 604 unions are not understood
# by OmegaConf 2.3), hence the UP-rule exemptions below.


@dataclass
class SuiteEntry:
    """One (task, optimizer) pair of a suite, with its budget and settings."""

    task: str = MISSING
    optimizer: str = MISSING
    steps: Optional[int] = None  # noqa: UP045  (None: the task's default)
    hparams: dict[str, Any] = field(default_factory=dict)
    task_cfg: dict[str, Any] = field(default_factory=dict)
    tuned: bool = False  # take hparams from the suite's tuning study instead
    tuning: dict[str, Any] = field(default_factory=dict)  # this entry's changes to the suite's
    tags: dict[str, Any] = field(default_factory=dict)  # added to every row of the entry
    meta_train: dict[str, Any] = field(default_factory=dict)  # how fresh=true makes a checkpoint
    #: for a task family: one run per member seed, each with ``task.member`` set (and, when
    #: tuned, its own study: a study's name includes the member); empty: the entry as written
    members: list[int] = field(default_factory=list)


@dataclass
class SuiteFile:
    """The schema of ``harness/conf/suite/*.yaml``."""

    name: str = MISSING
    description: str = ""
    seeds: int = 1
    first_seed: int = 0
    eval_every: Optional[int] = None  # noqa: UP045
    log_every: int = LOG_EVERY
    report: str = "standard"  # or "comparison" (harness.results.comparison)
    optional_tasks: list[str] = field(default_factory=list)  # skipped if their data is missing
    tuning: TuningRef = field(default_factory=TuningRef)
    runs: list[Any] = field(default_factory=list)  # SuiteEntry each, checked by suite_entries()


@dataclass
class SuiteConfig:
    """``lopt suite name=NAME``: run a suite file, write its tidy CSV and its report.

    Attributes:
        suite: the suite file (``name=NAME``: ``lopt list suites``; its runs, seeds, report).
        warmup_steps: untimed steps before each run's clock starts.
        device: ``cpu`` or ``cuda``.
        report: write the report (tables and plots) next to the results file.
        reference: the optimizer speedups are measured against.
        resume: skip the runs an interrupted call already saved.
        reuse: keep the runs already in the results file that this suite still makes (the
            same run id: task, settings, hyperparameters, seed) and run only the others, e.g.
            the entries added to the suite file since; false reruns everything. A learned
            optimizer's checkpoint is not part of the id: after re-meta-training one, run with
            reuse=false.
        plugins: local modules to import first (tasks and optimizers they register).
        max_seconds: make this call a resumable chunk of about this many wall-clock seconds:
            no run starts that would end past it (by the longest run so far); the runs in
            flight finish and, with runs left, the command exits 75 and the same command
            continues (None: no limit).
    """

    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"suite": "small"}])
    suite: SuiteFile = field(default_factory=SuiteFile)
    seeds: Optional[int] = None  # noqa: UP045  (None: the suite file's)
    device: str = "cpu"
    threads: Optional[int] = 1  # noqa: UP045  (None: torch's default, all cores)
    workers: int = 1  # runs at a time, each in its own 1-thread process
    warmup_steps: int = WARMUP_STEPS
    out: Optional[str] = None  # noqa: UP045  (None: results/<suite name>/results.csv)
    report: bool = True
    reference: Optional[str] = None  # noqa: UP045  (None: the report's default)
    resume: bool = True
    reuse: bool = False
    fresh: bool = False  # redo the suite's tuning studies and meta-training from scratch
    plugins: list[str] = field(default_factory=list)
    max_seconds: Optional[float] = None  # noqa: UP045  (None: no limit)


def suite_entries(suite: Any) -> list[SuiteEntry]:
    """The suite file's ``runs``, each checked against :class:`SuiteEntry`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    entries = []
    for index, raw in enumerate(suite.runs):
        try:
            node = OmegaConf.merge(OmegaConf.structured(SuiteEntry), raw)
            entry = typing.cast(SuiteEntry, OmegaConf.to_object(node))
        except OmegaConfBaseException as exc:
            raise UsageError(
                f"suite {suite.name!r}, runs[{index}]: {first_line(exc)} "
                "(each run needs task and optimizer; may set steps, hparams, task_cfg, tuned, "
                "tuning, tags, meta_train, members)"
            ) from exc
        entries.extend(per_member(suite.name, index, entry))
    if not entries:
        raise UsageError(f"suite {suite.name!r} has no runs")
    return entries


def per_member(suite: str, index: int, entry: SuiteEntry) -> list[SuiteEntry]:
    """``entry`` once per seed of its ``members`` (each with ``task_cfg.member`` set and
    ``members`` empty), or ``[entry]`` when it names none. ``UsageError`` when the task is not a
    family, a member is not an integer >= 0 or repeats, or ``task_cfg`` sets ``member`` too."""
    if not entry.members:
        return [entry]
    from harness.results.members import family_names

    where = f"suite {suite!r}, runs[{index}] ({entry.task}/{entry.optimizer})"
    families = sorted(family_names())
    if entry.task not in families:
        raise UsageError(
            f"{where}: members= needs a task family; allowed tasks: {', '.join(families)}"
        )
    if "member" in entry.task_cfg:
        raise UsageError(f"{where}: set members= or task_cfg.member, not both")
    members = list(entry.members)
    bad = [m for m in members if isinstance(m, bool) or not isinstance(m, int) or m < 0]
    if bad or len(set(members)) != len(members):
        shown = bad[0] if bad else "a repeated seed"
        raise UsageError(f"{where}: members must be distinct integers >= 0, got {shown!r}")
    return [
        dataclasses.replace(entry, task_cfg={**entry.task_cfg, "member": m}, members=[])
        for m in members
    ]


def check_suite_file(suite: Any) -> None:
    """The value checks of a composed :class:`SuiteFile` (its runs: :func:`suite_entries`)."""
    if suite.report not in REPORTS:
        raise UsageError(f"suite {suite.name!r}: report must be one of {', '.join(REPORTS)}")
