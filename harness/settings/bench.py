"""``lopt bench``'s settings and the value checks of the run settings.

:class:`BenchConfig` is the Hydra structured config of ``lopt bench``; its ``task`` and
``optimizer`` are config groups that :mod:`harness.config` generates from each registered task's
keyword arguments and each optimizer's ``HParam`` declarations. Hydra checks the types;
:func:`check_run_settings` checks the values of the run settings bench, suite and tune share.
:class:`TuningRef` (which study a ``tuned=true`` run reads) is shared with the suites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from harness.defaults import LOG_EVERY, WARMUP_STEPS
from harness.settings.tune import DEFAULT_STORAGE
from harness.settings.validate import MISSING, at_least

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
    trials: Optional[int] = None  # noqa: UP045  (the hard cap; until saturated, as a campaign)
    seeds: Optional[int] = None  # noqa: UP045  (tuning seeds; None: the campaign's default)
    fixed: dict[str, Any] = field(default_factory=dict)  # optimizer.NAME=VALUE of lopt tune
    search: dict[str, Any] = field(default_factory=dict)  # search.NAME=... of lopt tune


@dataclass
class BenchConfig:
    """``lopt bench``: every task x optimizer x seed, one tidy CSV.

    Attributes:
        task: the task(s) to run (``task=a,b``: each), ``task.SETTING=VALUE`` its settings.
        optimizer: the optimizer(s) to run (``optimizer=adam,sgd``: each),
            ``optimizer.NAME=VALUE`` a hyperparameter.
        seeds: runs per task and optimizer, seeds first_seed, first_seed + 1, ...
        first_seed: the first seed (fixes the initial parameters and the batch order).
        log_every: log the minibatch loss (split ``train_batch``) every this many steps.
        warmup_steps: untimed steps before the clock starts, from a copy of the initial state.
        device: ``cpu`` or ``cuda``.
        max_seconds: stop a run once its timed training reaches this many seconds (None: no
            limit).
        out: the results file (.csv, or .parquet with pyarrow); default under ``outputs/``,
            which git ignores.
        mode: what to do when ``out`` exists: ``new`` refuses it, ``append`` adds the runs it
            lacks (those in it are kept and not rerun), ``replace`` rewrites it with this
            command's runs.
        suite: the ``suite`` column of the rows (a label).
        resume: skip the runs an interrupted call already saved in ``<out>.parts/``.
        tuned: take the hyperparameters from the stored tuning study (``tuning.*`` selects it).
        tuning: which study ``tuned=true`` reads (objective, budget_steps, sampler, tag, storage).
        plugins: local modules to import first (tasks and optimizers they register).
    """

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
    # torch threads: 1 gives stable timings on a shared machine (docs/usage.md, Configuration);
    # None (threads=null): torch's default, all cores
    threads: Optional[int] = 1  # noqa: UP045
    workers: int = 1  # runs at a time, each in its own 1-thread process
    max_seconds: Optional[float] = None  # noqa: UP045
    out: str = "outputs/bench.csv"
    mode: str = "new"
    suite: str = "bench"
    resume: bool = True
    tuned: bool = False
    tuning: TuningRef = field(default_factory=TuningRef)
    plugins: list[str] = field(default_factory=list)


def check_run_settings(cfg: Any, warmup: bool = True) -> None:
    """The value checks of the run settings a composed :class:`BenchConfig`,
    :class:`~harness.settings.suite.SuiteConfig` or :class:`~harness.settings.tune.TuneConfig`
    has (Hydra has checked their types; a setting the config lacks is skipped;
    ``warmup=False``: it has no ``warmup_steps``)."""
    from tasks.base import resolve_device

    resolve_device(cfg.device)
    for key in ("steps", "eval_every", "max_seconds", "log_every"):
        at_least(key, cfg.get(key), 0, strict=True)
    if warmup:
        at_least("warmup_steps", cfg.warmup_steps, 0)
    at_least("threads", cfg.threads, 0, strict=True)
    at_least("workers", cfg.get("workers"), 1)
