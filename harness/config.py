"""Hydra configuration: config groups, structured configs and composition.

The groups:

* ``task``: one structured config per registered task, generated from the task class's keyword
  arguments (``task=mnist5k_cnn16 task.batch_size=64``);
* ``optimizer``: one per registered optimizer, generated from its declared hyperparameters
  (``optimizer=adam optimizer.lr=0.01``). Plugins get their groups the same way, so third-party
  tasks and optimizers are configured exactly like built-ins;
* ``suite``: YAML files in ``harness/conf/suite/`` (``lopt suite name=small``), typed by
  :class:`SuiteFile`.

Each ``lopt`` command composes one primary config (:class:`BenchConfig`, :class:`SuiteConfig`,
:class:`ReportConfig`) with the Compose API. Composition errors become one-line
:class:`~harness.errors.UsageError` messages.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.defaults import LOG_EVERY, WARMUP_STEPS
from harness.errors import UsageError
from harness.registry import OPTIMIZERS, TASKS, task_arguments
from harness.settings.meta import MetaTrainConfig
from harness.settings.tune import DEFAULT_STORAGE, TuneSettings
from harness.settings.validate import at_least

CONFIG_MODULE = "harness.conf"

# Hydra's structured configs need typing.Optional/List/Dict (PEP 604 unions are not understood
# by OmegaConf 2.3), hence the UP-rule exemptions below.


@dataclass
class TuningRef:
    """Which tuning study a ``tuned=true`` run takes its hyperparameters from (the study name is
    derived from the task, the optimizer and these)."""

    objective: str = "valid_loss"
    budget_steps: Optional[int] = None  # noqa: UP045  (None: the run's step budget)
    sampler: str = "tpe"
    tag: str = ""
    storage: str = DEFAULT_STORAGE
    # Used only when a suite runs its studies itself (``lopt suite ... fresh=true``):
    trials: Optional[int] = None  # noqa: UP045
    fixed: dict[str, Any] = field(default_factory=dict)  # optimizer.NAME=VALUE of lopt tune
    search: dict[str, Any] = field(default_factory=dict)  # search.NAME=... of lopt tune


@dataclass
class BenchConfig:
    """``lopt bench``: every task x optimizer x seed, one tidy CSV."""

    defaults: list[Any] = field(
        default_factory=lambda: [{"task": "mnist5k_cnn16"}, {"optimizer": "adam"}, "_self_"]
    )
    task: Any = MISSING
    optimizer: Any = MISSING
    steps: Optional[int] = None  # noqa: UP045  (None: the task's default)
    seeds: int = 1
    first_seed: int = 0
    eval_every: Optional[int] = None  # noqa: UP045  (None: steps // 20)
    log_every: int = LOG_EVERY
    warmup_steps: int = WARMUP_STEPS
    device: str = "cpu"
    # torch threads: 1 gives stable timings on a shared machine (README, Using it);
    # None (threads=null): torch's default, all cores
    threads: Optional[int] = 1  # noqa: UP045
    workers: int = 1  # runs at a time, each in its own 1-thread process
    max_seconds: Optional[float] = None  # noqa: UP045
    out: str = "results/bench.csv"
    suite: str = "bench"
    resume: bool = True
    tuned: bool = False
    tuning: TuningRef = field(default_factory=TuningRef)
    plugins: list[str] = field(default_factory=list)


#: the defaults of ``lopt tune``'s settings: :class:`~harness.settings.tune.TuneSettings`'s
_TUNE: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TuneSettings) if f.default is not MISSING_FIELD
}


@dataclass
class TuneConfig:
    """``lopt tune``: an Optuna study of one optimizer on one task (see harness.tuning); every
    setting :class:`~harness.settings.tune.TuneSettings` has takes its default from there."""

    defaults: list[Any] = field(
        default_factory=lambda: [{"task": "mnist5k_cnn16"}, {"optimizer": "adam"}, "_self_"]
    )
    task: Any = MISSING
    optimizer: Any = MISSING
    trials: int = _TUNE["trials"]
    objective: str = _TUNE["objective"]
    objective_at: str = _TUNE["objective_at"]
    budget_steps: Optional[int] = _TUNE["budget_steps"]  # noqa: UP045  (None: the task's steps)
    seeds: int = _TUNE["seeds"]
    eval_seeds: int = _TUNE["eval_seeds"]
    sampler: str = _TUNE["sampler"]
    sampler_seed: int = _TUNE["sampler_seed"]
    grid_points: int = _TUNE["grid_points"]
    pruner: str = _TUNE["pruner"]
    storage: str = _TUNE["storage"]
    tag: str = _TUNE["tag"]
    eval_every: Optional[int] = _TUNE["eval_every"]  # noqa: UP045  (None: budget_steps // 10)
    device: str = _TUNE["device"]
    threads: Optional[int] = 1  # noqa: UP045  (None: torch's default, all cores)
    out: str = _TUNE["out"]
    plugins: list[str] = field(default_factory=list)


@dataclass
class MetaTrainCommandConfig(MetaTrainConfig):
    """``lopt meta-train``: MetaTrainConfig with the task as a config group (``task=NAME``,
    ``task.SETTING=VALUE``)."""

    defaults: list[Any] = field(default_factory=lambda: [{"task": "mnist5k_cnn16"}, "_self_"])
    task: Any = MISSING


@dataclass
class StudiesConfig:
    """``lopt studies``: every study in a storage as a tidy CSV, with learning-rate plots."""

    storage: str = DEFAULT_STORAGE
    out: str = "results/tuning"


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
    """``lopt suite name=NAME``: run a suite file, write its tidy CSV and its report."""

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
    fresh: bool = False  # redo the suite's tuning studies and meta-training from scratch
    plugins: list[str] = field(default_factory=list)


# ``in`` is a Python keyword, so the report config is a plain node with a checked shape.
REPORT_DEFAULTS: dict[str, Any] = {
    "in": MISSING,
    "out": MISSING,
    "reference": None,
    "target_split": "train",
    "kind": "standard",  # or "comparison": the paper's comparison report (tags.comparison)
}

PRIMARY = {
    "bench": "lopt_bench",
    "suite": "lopt_suite",
    "report": "lopt_report",
    "tune": "lopt_tune",
    "studies": "lopt_studies",
    "meta-train": "lopt_meta_train",
}


def register_configs() -> None:
    """Store the primary configs and one group entry per registered task and optimizer."""
    store = ConfigStore.instance()
    store.store(name=PRIMARY["bench"], node=BenchConfig)
    store.store(name=PRIMARY["suite"], node=SuiteConfig)
    store.store(name=PRIMARY["report"], node=OmegaConf.create(REPORT_DEFAULTS))
    store.store(name=PRIMARY["tune"], node=TuneConfig)
    store.store(name=PRIMARY["studies"], node=StudiesConfig)
    store.store(name=PRIMARY["meta-train"], node=MetaTrainCommandConfig)
    for name in TASKS.names():
        store.store(group="task", name=name, node=task_config_class(name))
    for name in OPTIMIZERS.names():
        store.store(group="optimizer", name=name, node=optimizer_config_class(name))


def optimizer_config_class(name: str) -> type:
    """A dataclass with ``name`` and one typed field per declared hyperparameter."""
    factory = OPTIMIZERS.get(name).factory
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for spec in getattr(factory, "hparam_specs", ()):
        fields.append((spec.name, spec.type, field(default=spec.default)))
    return dataclasses.make_dataclass(f"{_camel(name)}OptimizerConfig", fields)


def task_config_class(name: str) -> type:
    """A dataclass with ``name`` and one typed field per keyword argument of the task class
    (``device`` excluded: it is a run setting)."""
    factory = TASKS.get(name).factory
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for param, annotation, default in task_arguments(factory):
        fields.append((param, annotation, field(default=default)))
    return dataclasses.make_dataclass(f"{_camel(name)}TaskConfig", fields)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


@contextmanager
def hydra_context() -> Iterator[None]:
    """Initialise Hydra's Compose API on ``harness.conf`` (and clean up afterwards)."""
    GlobalHydra.instance().clear()
    register_configs()
    with initialize_config_module(version_base=None, config_module=CONFIG_MODULE):
        yield


def compose_config(command: str, overrides: Sequence[str]) -> DictConfig:
    """Compose the primary config of ``command`` with Hydra ``overrides`` (inside
    :func:`hydra_context`); errors become one-line ``UsageError``s."""
    try:
        return compose(config_name=PRIMARY[command], overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise UsageError(describe_config_error(exc)) from exc


def describe_config_error(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf exception and its cause.

    Hydra's messages are several lines and suggest its own syntax (``To append to your config
    use +key=value``); Hydra has no option for a one-line form, so the first lines are joined
    and that hint dropped here."""
    first = _first_line(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _first_line(cause) and _first_line(cause) not in first:
        first = f"{first}: {_first_line(cause)}"
    first = first.replace("Error merging override", "invalid override")
    return first.replace("To append to your config use", "").strip()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def check_run_settings(cfg: DictConfig, warmup: bool = True) -> None:
    """The value checks of the run settings a composed :class:`BenchConfig`,
    :class:`SuiteConfig` or :class:`TuneConfig` has (Hydra has checked their types; a setting
    the config lacks is skipped; ``warmup=False``: it has no ``warmup_steps``)."""
    from tasks.base import resolve_device

    resolve_device(cfg.device)
    for key in ("steps", "eval_every", "max_seconds", "log_every"):
        at_least(key, cfg.get(key), 0, strict=True)
    if warmup:
        at_least("warmup_steps", cfg.warmup_steps, 0)
    at_least("threads", cfg.threads, 0, strict=True)
    at_least("workers", cfg.get("workers"), 1)


def list_suites() -> list[str]:
    """Names of the suite files in ``harness/conf/suite``."""
    from importlib import resources

    folder = resources.files(CONFIG_MODULE) / "suite"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def suite_entries(suite: DictConfig) -> list[SuiteEntry]:
    """The suite file's ``runs``, each checked against :class:`SuiteEntry`."""
    entries = []
    for index, raw in enumerate(suite.runs):
        try:
            node = OmegaConf.merge(OmegaConf.structured(SuiteEntry), raw)
            entry = typing.cast(SuiteEntry, OmegaConf.to_object(node))
        except OmegaConfBaseException as exc:
            raise UsageError(
                f"suite {suite.name!r}, runs[{index}]: {_first_line(exc)} "
                "(each run needs task and optimizer; may set steps, hparams, task_cfg, tuned, "
                "tuning, tags, meta_train)"
            ) from exc
        entries.append(entry)
    if not entries:
        raise UsageError(f"suite {suite.name!r} has no runs")
    return entries
