"""``lopt report``'s and ``lopt studies``' settings, and the report's check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError
from harness.settings.tune import DEFAULT_STORAGE
from harness.settings.validate import MISSING

# ``in`` is a Python keyword, so the report config is a plain node with a checked shape.
REPORT_DEFAULTS: dict[str, Any] = {
    "in": MISSING,  # the tidy results file to report on (.csv or .parquet), or a list: in=[A,B]
    "out": MISSING,  # the folder the tables and plots are written to
    "reference": None,  # the optimizer speedups are measured against (None: the default)
    "target_split": "train",  # the split of the target loss: train, valid or test
    "mode": "new",  # out holds files: new refuses, replace writes into it
    "kind": "standard",  # standard, or comparison: the paper's comparison report (tags.comparison)
}


@dataclass
class StudiesConfig:
    """``lopt studies``: every study in a storage as a tidy CSV, with learning-rate plots.

    Attributes:
        storage: the Optuna storage URL the studies are read from.
        out: the folder the trials, saturation table and plots are written to.
    """

    storage: str = DEFAULT_STORAGE
    out: str = "results/tuning"


def check_report(cfg: Any) -> None:
    """The value checks of a composed ``lopt report`` config."""
    from omegaconf import OmegaConf

    missing = [key for key in ("in", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise UsageError(f"lopt report needs {' and '.join(f'{k}=...' for k in missing)}")
    report_inputs(cfg)
    if cfg.target_split not in ("train", "valid", "test"):
        raise UsageError(f"target_split must be train, valid or test, got {cfg.target_split!r}")
    if cfg.kind not in ("standard", "comparison"):
        raise UsageError(f"kind must be standard or comparison, got {cfg.kind!r}")


def report_inputs(cfg: Any) -> list[str]:
    """The results files ``in`` names: one path, or a non-empty list ``in=[A,B]`` whose tables
    are reported as one (``UsageError`` otherwise)."""
    from omegaconf import ListConfig

    value = cfg["in"]
    paths = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise UsageError(
            f"in must be a results file or a list of them, in=[A.csv,B.csv]; got {value!r}"
        )
    return paths
