"""``TuneSettings``: what ``lopt tune`` (and ``tune(...)`` from Python) asks for, and its check;
:class:`TuneConfig`, the command's Hydra structured config, takes its defaults from it.

The choices of a study's settings are here too (the study, storage and saturation modules of
:mod:`harness.tuning` import them), so checking the settings needs neither Optuna nor the
registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.settings.validate import MISSING, at_least, one_of

OBJECTIVES = {"valid_loss": "valid", "train_loss": "train"}  # objective -> the split it reads
OBJECTIVE_AT = ("final", "best")
SAMPLERS = ("tpe", "random", "grid", "qmc")
PRUNERS = ("median", "none")
UNTIL = ("trials", "saturated")
DEFAULT_STORAGE = "sqlite:///results/tuning/optuna.db"
#: seconds between heartbeats of a running trial; one silent for 3 heartbeats is re-queued
DEFAULT_HEARTBEAT = 10
#: the saturation rule's minimum trial count (:class:`harness.tuning.saturation.SaturationRule`)
SATURATION_MIN_TRIALS = 32


@dataclass
class TuneSettings:
    """What ``lopt tune`` asks for (the CLI's keys, with the same names and defaults)."""

    task: str
    optimizer: str
    trials: int = 20
    until: str = "trials"
    objective: str = "valid_loss"
    objective_at: str = "final"
    budget_steps: int | None = None
    seeds: int = 1
    eval_seeds: int = 5
    confirm_seeds: int = 4
    sampler: str = "tpe"
    sampler_seed: int = 0
    grid_points: int = 13
    pruner: str = "median"
    storage: str = DEFAULT_STORAGE
    heartbeat: int = DEFAULT_HEARTBEAT
    tag: str = ""
    eval_every: int | None = None
    device: str = "cpu"
    out: str = "results/tuning"
    task_cfg: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """``UsageError`` for the first setting that is out of its allowed values."""
        one_of("sampler", self.sampler, SAMPLERS)
        one_of("pruner", self.pruner, PRUNERS)
        one_of("objective", self.objective, tuple(OBJECTIVES))
        one_of("objective_at", self.objective_at, OBJECTIVE_AT)
        one_of("until", self.until, UNTIL)
        for key in ("trials", "seeds", "budget_steps", "eval_every"):
            at_least(key, getattr(self, key), 0, strict=True)
        at_least("eval_seeds", self.eval_seeds, 0)
        at_least("heartbeat", self.heartbeat, 1)
        if self.confirm_seeds != 0 and self.confirm_seeds < 2:
            raise UsageError(
                f"confirm_seeds must be 0 (no confirmation) or >= 2 (a paired comparison needs "
                f"a standard error), got {self.confirm_seeds}"
            )
        at_least("grid_points", self.grid_points, 2)
        if self.until == "saturated" and self.trials < SATURATION_MIN_TRIALS:
            raise UsageError(
                f"until=saturated: trials is the cap and must be >= {SATURATION_MIN_TRIALS} "
                f"(the saturation rule's minimum), got {self.trials}"
            )


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
    confirm_seeds: int = _TUNE["confirm_seeds"]
    sampler: str = _TUNE["sampler"]
    sampler_seed: int = _TUNE["sampler_seed"]
    grid_points: int = _TUNE["grid_points"]
    pruner: str = _TUNE["pruner"]
    storage: str = _TUNE["storage"]
    heartbeat: int = _TUNE["heartbeat"]
    tag: str = _TUNE["tag"]
    eval_every: Optional[int] = _TUNE["eval_every"]  # noqa: UP045  (None: budget_steps // 10)
    device: str = _TUNE["device"]
    threads: Optional[int] = 1  # noqa: UP045  (None: torch's default, all cores)
    out: str = _TUNE["out"]
    plugins: list[str] = field(default_factory=list)
