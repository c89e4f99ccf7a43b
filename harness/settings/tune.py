"""``TuneSettings``: what ``lopt tune`` (and ``tune(...)`` from Python) asks for, and its check.

The choices of a study's settings are here too (the study, storage and saturation modules of
:mod:`harness.tuning` import them), so checking the settings needs neither Optuna nor the
registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError
from harness.settings.validate import at_least, one_of

OBJECTIVES = {"valid_loss": "valid", "train_loss": "train"}  # objective -> the split it reads
OBJECTIVE_AT = ("final", "best")
SAMPLERS = ("tpe", "random", "grid", "qmc")
PRUNERS = ("median", "none")
UNTIL = ("trials", "saturated")
DEFAULT_STORAGE = "sqlite:///results/tuning/optuna.db"
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
    sampler: str = "tpe"
    sampler_seed: int = 0
    grid_points: int = 13
    pruner: str = "median"
    storage: str = DEFAULT_STORAGE
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
        at_least("grid_points", self.grid_points, 2)
        if self.until == "saturated" and self.trials < SATURATION_MIN_TRIALS:
            raise UsageError(
                f"until=saturated: trials is the cap and must be >= {SATURATION_MIN_TRIALS} "
                f"(the saturation rule's minimum), got {self.trials}"
            )
