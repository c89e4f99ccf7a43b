"""Hydra configuration: config groups, registration and composition.

The groups:

* ``task``: one structured config per registered task, generated from the task class's keyword
  arguments (``task=mnist5k_cnn16 task.batch_size=64``);
* ``optimizer``: one per registered optimizer, generated from its declared hyperparameters
  (``optimizer=adam optimizer.lr=0.01``). Plugins get their groups the same way, so third-party
  tasks and optimizers are configured exactly like built-ins;
* ``suite``: YAML files in ``harness/conf/suite/`` (``lopt suite name=small``), typed by
  :class:`~harness.settings.suite.SuiteFile`.

Each ``lopt`` command composes one primary config with the Compose API: the structured configs
and their value checks are the commands' settings in :mod:`harness.settings`
(:class:`~harness.settings.bench.BenchConfig`, :class:`~harness.settings.suite.SuiteConfig`, ...);
this module registers them, and the task and optimizer groups it generates, with Hydra.
Composition errors become one-line :class:`~harness.errors.UsageError` messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import field
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import UsageError
from harness.registry import OPTIMIZERS, TASKS, task_arguments
from harness.settings.bench import BenchConfig
from harness.settings.meta import MetaTrainCommandConfig
from harness.settings.report import REPORT_DEFAULTS, StudiesConfig
from harness.settings.suite import SuiteConfig
from harness.settings.tune import TuneConfig
from harness.settings.validate import first_line

CONFIG_MODULE = "harness.conf"

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
    first = first_line(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and first_line(cause) and first_line(cause) not in first:
        first = f"{first}: {first_line(cause)}"
    first = first.replace("Error merging override", "invalid override")
    return first.replace("To append to your config use", "").strip()


def list_suites() -> list[str]:
    """Names of the suite files in ``harness/conf/suite``."""
    from importlib import resources

    folder = resources.files(CONFIG_MODULE) / "suite"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
