"""``FamilyEvaluateConfig``: every option of ``lopt evaluate-family``, with its default and its
check (plain data; value checks only, nothing is built or read here).

:func:`coerce_evaluate_config` turns a mapping (the command line's ``key=value`` overrides) into
a checked config; :meth:`FamilyEvaluateConfig.check` raises a one-line ``UsageError`` naming the
setting, what is allowed and the value given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.settings.validate import config_data, integer, number, positive_int, typed_fields

#: Adam's learning-rate grid: 1e-4 .. 1e-1 in half-decades (7 points, Adam's default among them)
DEFAULT_LR_GRID = tuple(float(f"{10 ** (-4 + k / 2):.4g}") for k in range(7))
MIN_GRID = 3


@dataclass
class FamilyEvaluateConfig:
    """``lopt evaluate-family``: a family-trained learned optimizer on held-out family tasks
    against Adam tuned per task, Adam at its default and the learner's initial theta.

    Attributes:
        checkpoint: the learned optimizer (a ``lopt.safetensors`` path or a shipped name); its
            learner must run batched.
        family: the task family to draw the held-out sample from.
        tasks: held-out tasks (members ``EVAL_FIRST_SEED + k``, :mod:`harness.meta.family.
            evalset`).
        seeds: evaluation seeds per task (each: the initialisation and the data order).
        first_seed: the first evaluation seed.
        steps: inner steps of every run (0: the family's ``default_steps``, what ``lopt bench
            task=FAMILY`` runs).
        checkpoints: whole-training-split evaluations along each run, evenly spaced, the last
            at ``steps`` (the resolution of steps-to-target).
        lr_grid: Adam's learning rates; per task the best by mean final training loss is
            "tuned Adam" for speed, the best by mean final validation loss for test loss.
        adam_default: Adam's default learning rate (must be on the grid).
        timing_steps: steps per optimizer and task in the per-step cost measurement.
        bootstrap: bootstrap resamples for the intervals.
        out: the folder for the parts, ``evaluation.csv``, ``per_task.csv``, ``summary.md``,
            ``speedups.png`` and ``config.json``.
        max_seconds: stop after the task that passes this many seconds (None: no limit); the
            same command continues.
        progress: one line per finished task.
        plugins: local modules to import first (families or learners of plugins).
    """

    checkpoint: str = ""
    family: str = "mlp_mix"
    tasks: int = 64
    seeds: int = 10
    first_seed: int = 0
    steps: int = 0
    checkpoints: int = 25
    lr_grid: list[float] = field(default_factory=lambda: list(DEFAULT_LR_GRID))
    adam_default: float = 1e-3
    timing_steps: int = 30
    bootstrap: int = 1000
    out: str = "outputs/evaluate-family"
    max_seconds: Optional[float] = None  # noqa: UP045
    progress: bool = True
    plugins: list[str] = field(default_factory=list)

    def check(self) -> FamilyEvaluateConfig:
        """Raise a one-line ``UsageError`` for the first invalid value; returns ``self``."""
        if not str(self.checkpoint):
            raise UsageError("checkpoint= is required: a learned optimizer's .safetensors path")
        for name in ("tasks", "seeds", "checkpoints", "timing_steps", "bootstrap"):
            positive_int(name, getattr(self, name))
        integer("first_seed", self.first_seed, 0)
        integer("steps", self.steps, 0)
        if 0 < self.steps < self.checkpoints:
            raise UsageError(f"steps ({self.steps}) must be >= checkpoints ({self.checkpoints})")
        rates = list(self.lr_grid)
        if len(rates) < MIN_GRID or len(set(rates)) != len(rates):
            raise UsageError(
                f"lr_grid must hold at least {MIN_GRID} distinct learning rates; got {rates!r}"
            )
        for rate in rates:
            number("lr_grid", rate, low=0.0, strict=True)
        number("adam_default", self.adam_default, low=0.0, strict=True)
        if not any(math.isclose(self.adam_default, r, rel_tol=1e-9) for r in rates):
            raise UsageError(
                f"adam_default ({self.adam_default:g}) must be one of lr_grid "
                f"({', '.join(f'{r:g}' for r in rates)})"
            )
        if self.max_seconds is not None:
            number("max_seconds", self.max_seconds, low=0.0, strict=True)
        if not str(self.out):
            raise UsageError("out must name a folder")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        data = dataclasses.asdict(self)
        data["lr_grid"] = [float(r) for r in self.lr_grid]
        data["plugins"] = list(self.plugins)
        return data


#: what a resumed evaluation must share with the one it continues (not ``tasks``: task k is the
#: same in every sample size, so a larger ``tasks=`` extends a finished evaluation)
IDENTITY_FIELDS = (
    "family",
    "seeds",
    "first_seed",
    "steps",
    "checkpoints",
    "lr_grid",
    "adam_default",
)


def coerce_evaluate_config(cfg: Any = None, **overrides: Any) -> FamilyEvaluateConfig:
    """A checked :class:`FamilyEvaluateConfig` from a config or a mapping, updated with
    ``overrides``; unknown keys raise ``UsageError``."""
    data = config_data(cfg, FamilyEvaluateConfig, "evaluate-family")
    data.update(overrides)
    typed = typed_fields(data, FamilyEvaluateConfig, "evaluate-family")
    return FamilyEvaluateConfig(**typed).check()
