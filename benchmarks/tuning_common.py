"""Shared by the tuning benchmarks: one row per run of a tidy results table."""

from __future__ import annotations

import json
import math

import pandas as pd

OBJECTIVES = {"train_loss": "train", "valid_loss": "valid"}


def final_losses(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``lr, seed, status, seconds`` (timed) and the final whole-split
    ``train_loss`` and ``valid_loss`` (``inf`` for a run that diverged)."""
    rows = []
    for _run_id, run in frame.groupby("run_id"):
        losses = run[run.metric == "loss"]
        last = losses[losses.step == losses.step.max()]
        status = str(run.status.iloc[0])
        row = {
            "lr": float(json.loads(run.hparams.iloc[0])["lr"]),
            "seed": int(run.seed.iloc[0]),
            "status": status,
            "seconds": float(run.wall_time_s.max()),
        }
        for objective, split in OBJECTIVES.items():
            values = last[last.split == split].value
            finite = status == "completed" and len(values) and math.isfinite(values.iloc[0])
            row[objective] = float(values.iloc[0]) if finite else math.inf
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["lr", "seed"]).reset_index(drop=True)
