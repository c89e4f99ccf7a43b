"""``lopt report``'s and ``lopt studies``' settings, and the report's check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError
from harness.settings.tune import DEFAULT_STORAGE
from harness.settings.validate import MISSING

# ``in`` is a Python keyword, so the report config is a plain node with a checked shape.
REPORT_DEFAULTS: dict[str, Any] = {
    "in": MISSING,
    "out": MISSING,
    "reference": None,
    "target_split": "train",
    "kind": "standard",  # or "comparison": the paper's comparison report (tags.comparison)
}


@dataclass
class StudiesConfig:
    """``lopt studies``: every study in a storage as a tidy CSV, with learning-rate plots."""

    storage: str = DEFAULT_STORAGE
    out: str = "results/tuning"


def check_report(cfg: Any) -> None:
    """The value checks of a composed ``lopt report`` config."""
    from omegaconf import OmegaConf

    missing = [key for key in ("in", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise UsageError(f"lopt report needs {' and '.join(f'{k}=...' for k in missing)}")
    if cfg.target_split not in ("train", "valid", "test"):
        raise UsageError(f"target_split must be train, valid or test, got {cfg.target_split!r}")
    if cfg.kind not in ("standard", "comparison"):
        raise UsageError(f"kind must be standard or comparison, got {cfg.kind!r}")
