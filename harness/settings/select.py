"""``lopt select-snapshot``'s settings: which meta-training run, which snapshots, which seeds.

Plain data, checked by the one set of validators (:mod:`harness.settings.validate`); every bad
value is a one-line ``UsageError`` naming the setting and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError
from harness.settings.validate import MISSING, at_least, config_data, integer, typed_fields

#: the paper suite's studies, which its learned optimizers were selected against
PAPER_STORAGE = "sqlite:///results/paper/optuna.db"


@dataclass
class SelectSnapshotConfig:
    """Settings of ``lopt select-snapshot`` (:mod:`harness.meta.selection`).

    Attributes:
        run: the meta-training run's folder (its ``config.json``, ``meta_log.csv`` and
            snapshots ``lopt_stepNNNNNN.safetensors``).
        snapshots: the outer steps whose snapshots compete; 0 is the theta the run started at
            (its ``init_from`` checkpoint, or else the learner's initial theta).
        seeds, first_seed: the selection seeds (default 200-204: not the suite's 100-104).
        steps: inner steps of every candidate's run; ``eval_every``: whole-split evaluations.
        baseline: the tuned baseline (default: ``adam`` for an outer-train run, ``adamw_cosine``
            for an outer-valid one); ``tuned=false`` runs it at its default hyperparameters.
        storage: the tuning studies the baseline's hyperparameters come from (default the
            paper suite's).
        workers: processes running the candidates (one thread each).
        out: the tidy CSV of the candidates' runs (default ``RUN/selection.csv``); runs already
            there are not run again.
        noise_only: print the run's ES noise-over-signal ratio only (no runs).
    """

    run: str = MISSING
    snapshots: list[int] = field(default_factory=lambda: [0, 5, 10, 15, 20, 25])
    seeds: int = 5
    first_seed: int = 200
    steps: int = 2000
    eval_every: int = 100
    baseline: str | None = None
    tuned: bool = True
    storage: str = PAPER_STORAGE
    workers: int = 2
    out: str | None = None
    noise_only: bool = False

    def check(self) -> SelectSnapshotConfig:
        """Raise a one-line ``UsageError`` for the first bad value; returns ``self``."""
        if self.run == MISSING:
            raise UsageError("lopt select-snapshot needs run=DIR (a `lopt meta-train` out folder)")
        if not self.snapshots:
            raise UsageError("snapshots must list at least one outer step, e.g. [0,5,10]")
        for step in self.snapshots:
            integer("snapshots", step, 0)
        if len(set(self.snapshots)) != len(self.snapshots):
            raise UsageError(f"snapshots must not repeat a step, got {self.snapshots}")
        integer("first_seed", self.first_seed, 0)
        for name in ("seeds", "steps", "eval_every", "workers"):
            at_least(name, getattr(self, name), 1)
        return self


def coerce_select_config(cfg: Any = None, **overrides: Any) -> SelectSnapshotConfig:
    """A checked :class:`SelectSnapshotConfig` from an instance, a mapping or an OmegaConf
    node, updated with ``overrides``; unknown keys raise ``UsageError``."""
    data = config_data(cfg, SelectSnapshotConfig, "select-snapshot")
    data.update(overrides)
    data = typed_fields(data, SelectSnapshotConfig, "select-snapshot")
    return SelectSnapshotConfig(**data).check()
