"""Tuning studies as tidy tables and plots.

:func:`trials_frame` has one row per trial: ``study, task, optimizer, objective, budget_steps,
sampler, trials, trial, state, counted, value, hparams`` (JSON), ``fail_reason``,
``duration_s``, ``default`` (the optimizer's defaults, queued first), ``retry_of``, and one
``param_<name>`` column per searched hyperparameter. ``counted`` marks the trials that form the
study's result (its first ``trials`` counted trials; see :mod:`harness.tuning.study`).

:func:`plot_objective_vs_lr` draws the objective against the learning rate on a log axis, one
colour per optimizer, failed (diverged) trials as crosses at the top and pruned ones as hollow
circles, each study's best trial as a star, so a reader sees the optimum is not at an edge.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.results.io import write_atomically
from harness.tuning.study import count_trials, counted_trials, stored_protocol

COLUMNS = (
    "study",
    "task",
    "optimizer",
    "objective",
    "budget_steps",
    "sampler",
    "trials",
    "trial",
    "state",
    "counted",
    "value",
    "hparams",
    "fail_reason",
    "duration_s",
    "default",
    "retry_of",
)


def trials_frame(study: optuna.Study, trials: int) -> pd.DataFrame:
    """One row per trial of ``study`` (see the module docstring)."""
    protocol = stored_protocol(study)
    counted = {t.number for t in counted_trials(study, trials)}
    interrupted = {t.number for t in count_trials(study).interrupted}
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else np.nan
        )
        row = {
            "study": study.study_name,
            "task": protocol["task"],
            "optimizer": protocol["optimizer"],
            "objective": protocol["objective"],
            "budget_steps": protocol["budget_steps"],
            "sampler": protocol["sampler"],
            "trials": trials,
            "trial": t.number,
            "state": "interrupted" if t.number in interrupted else t.state.name.lower(),
            "counted": t.number in counted,
            "value": t.value if t.value is not None else np.nan,
            "hparams": t.user_attrs.get("hparams", json.dumps(t.params, sort_keys=True)),
            "fail_reason": t.user_attrs.get("fail_reason", ""),
            "duration_s": duration,
            "default": bool(t.user_attrs.get("defaults", False)),
            "retry_of": t.user_attrs.get("retry_of", np.nan),
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    params = sorted(c for c in frame.columns if c.startswith("param_"))
    return frame[[*COLUMNS, *params]]


def write_trials(frame: pd.DataFrame, path: Path) -> Path:
    return write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def plot_objective_vs_lr(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Objective against ``param_lr`` (log x) for each optimizer in ``frame`` (see module doc)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    frame = frame[frame["counted"] & frame["param_lr"].notna()]
    finite = frame["value"][np.isfinite(frame["value"])]
    ceiling = float(finite.max()) * 1.1 if len(finite) else 1.0
    colours = dict(zip(sorted(frame["optimizer"].unique()), _palette(), strict=False))
    for (optimizer, _study), trials in frame.groupby(["optimizer", "study"], sort=True):
        colour = colours[optimizer]
        done = trials[trials["state"] == "complete"]
        axes.scatter(done["param_lr"], done["value"], color=colour, s=22, label=f"{optimizer}")
        pruned = trials[trials["state"] == "pruned"]
        axes.scatter(
            pruned["param_lr"], [ceiling] * len(pruned), facecolors="none", edgecolors=colour, s=22
        )
        failed = trials[trials["state"] == "fail"]
        axes.scatter(failed["param_lr"], [ceiling] * len(failed), color=colour, marker="x", s=30)
        if len(done):
            best = done.loc[done["value"].idxmin()]
            axes.scatter(
                [best["param_lr"]],
                [best["value"]],
                color=colour,
                marker="*",
                s=160,
                edgecolors="black",
                zorder=3,
            )
    axes.set_xscale("log")
    if len(finite) and (finite > 0).all():
        axes.set_yscale("log")
    objective = ", ".join(sorted(frame["objective"].unique())) or "objective"
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel(f"{objective} at the end of the budget")
    axes.set_title(
        f"{title}\n(star: best; x at the top: diverged; hollow at the top: pruned)", fontsize=9
    )
    axes.grid(True, which="both", alpha=0.3)
    if len(colours) > 0:
        axes.legend(fontsize=8)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def _palette() -> list[str]:
    return [f"C{i}" for i in range(10)]
