"""Tuning studies as tidy tables and plots.

:func:`trials_frame` has one row per trial: ``study, task, optimizer, objective, budget_steps,
sampler, trials, trial, state, counted, chosen, value, hparams`` (JSON), ``fail_reason``,
``duration_s``, ``default`` (the optimizer's defaults, queued first), ``retry_of``, and one
``param_<name>`` column per searched hyperparameter. ``counted`` marks the trials that form the
study's result (its first ``trials`` counted trials; see :mod:`harness.tuning.study`), ``chosen``
the one whose configuration is tuned (:func:`~harness.tuning.saturation.chosen_trial`). ``state``
is Optuna's, lower-case, except ``diverged`` (a completed trial whose value is the divergence
penalty) and ``interrupted``.

:func:`plot_objective_vs_lr` draws the objective against the learning rate on a log axis, one
colour per optimizer, failed and diverged trials as crosses at the top and pruned ones as hollow
circles, each study's chosen trial as a star, so a reader sees the optimum is not at an edge.

:func:`plot_best_so_far` draws a study's best value after each trial, with every trial's value
(diverged and pruned ones at the top), the halves the saturation rule compares and its
verdict; :func:`saturation_table` has one row per study: trial count, states, best value, the
halves' bests, the second half's gain, the verdict (:mod:`harness.tuning.saturation`) and the
chosen trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.tuning.saturation import (
    DEFAULT_RULE,
    SaturationRule,
    best_so_far,
    chosen_trial,
    fresh_seed_mean,
    saturation_verdict,
    study_saturation,
    trial_values,
)
from harness.tuning.study import (
    ATTR_TRIALS,
    ATTR_UNTIL,
    count_trials,
    counted_trials,
    is_diverged,
    stored_protocol,
)
from harness.util import markdown_table, write_atomically

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
    "chosen",
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
    chosen = chosen_trial(study, trials)
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
            "state": _state(t, interrupted),
            "counted": t.number in counted,
            "chosen": chosen is not None and t.number == chosen.number,
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


def _state(trial: optuna.trial.FrozenTrial, interrupted: set[int]) -> str:
    if trial.number in interrupted:
        return "interrupted"
    if trial.state == optuna.trial.TrialState.COMPLETE and is_diverged(trial):
        return "diverged"
    return trial.state.name.lower()


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
        failed = trials[trials["state"].isin(["fail", "diverged"])]
        axes.scatter(failed["param_lr"], [ceiling] * len(failed), color=colour, marker="x", s=30)
        if len(done):
            marked = done[done["chosen"]] if "chosen" in done else done.iloc[:0]
            best = marked.iloc[0] if len(marked) else done.loc[done["value"].idxmin()]
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
        f"{title}\n(star: the chosen trial; x at the top: diverged; hollow at the top: pruned)",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    if len(colours) > 0:
        axes.legend(fontsize=8)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def study_result(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that form ``study``'s result so far: its first ``trials`` counted ones (all
    counted ones while it runs)."""
    target = int(study.user_attrs.get(ATTR_TRIALS, 0))
    return counted_trials(study, target if target else 10**9)


def plot_best_so_far(
    study: optuna.Study, trials: int | None, path: Path, rule: SaturationRule = DEFAULT_RULE
) -> Path:
    """The best value after each of the study's first ``trials`` counted trials (see module)."""
    chosen = counted_trials(study, trials) if trials is not None else study_result(study)
    objective = stored_protocol(study)["objective"]
    values = np.asarray(trial_values(chosen), dtype=float)
    verdict = study_saturation(study, len(chosen), rule)  # the confirmed verdict, if any
    x = np.arange(1, len(values) + 1)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(x, values, s=14, color="C0", alpha=0.5, label="trial value")
    diverged = [i + 1 for i, t in enumerate(chosen) if is_diverged(t)]
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if len(finite) else 1.0
    if diverged:
        axes.scatter(
            diverged, [top] * len(diverged), marker="x", color="C3", s=24, label="diverged"
        )
    pruned = [i + 1 for i, t in enumerate(chosen) if t.state == optuna.trial.TrialState.PRUNED]
    if pruned:
        axes.scatter(
            pruned, [top] * len(pruned), facecolors="none", edgecolors="C0", s=18, label="pruned"
        )
    axes.step(x, best_so_far(values), where="post", color="C1", linewidth=2, label="best so far")
    half = len(values) // 2
    if half:
        axes.axvline(half + 0.5, color="grey", linestyle="--", linewidth=1)
    axes.axvline(rule.min_trials + 0.5, color="grey", linestyle=":", linewidth=1)
    if len(finite) and (finite > 0).all():
        axes.set_yscale("log")
    axes.set_xlabel("trial (counted, in order; dashed: the halves; dotted: the minimum count)")
    axes.set_ylabel(objective)
    axes.set_title(f"{study.study_name}\n{verdict.verdict}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


SATURATION_COLUMNS = (
    "study",
    "task",
    "optimizer",
    "objective",
    "budget_steps",
    "until",
    "trials",
    "complete",
    "diverged",
    "pruned",
    "failed",
    "best_value",
    "first_half_best",
    "second_half_best",
    "second_half_gain",
    "tolerance",
    "saturated",
    "verdict",
    "trial_hours",
    "chosen_trial",
    "chosen_value",
    "chosen_fresh_seed_mean",
)


def saturation_table(
    studies: list[optuna.Study], rule: SaturationRule = DEFAULT_RULE
) -> pd.DataFrame:
    """One row per study (``SATURATION_COLUMNS``), on each study's result so far: the halves'
    bests and the gain are those of the trial values; ``saturated`` and ``verdict`` are the
    study's verdict (:func:`~harness.tuning.saturation.study_saturation`: confirmed by re-runs
    where the study holds a confirmation of these trials); ``chosen_*``: the trial whose
    configuration is tuned, its value and, where it was re-run, its fresh-seed mean."""
    rows = []
    for study in studies:
        protocol = stored_protocol(study)
        result = study_result(study)
        states = [_state(t, set()) for t in result]
        values = saturation_verdict(trial_values(result), protocol["objective"], rule)
        verdict = study_saturation(study, len(result), rule)  # confirmed, where re-run
        chosen = chosen_trial(study, len(result))
        fresh = None if chosen is None else fresh_seed_mean(study, len(result), chosen.number)
        rows.append(
            {
                "study": study.study_name,
                "task": protocol["task"],
                "optimizer": protocol["optimizer"],
                "objective": protocol["objective"],
                "budget_steps": protocol["budget_steps"],
                "until": study.user_attrs.get(ATTR_UNTIL, "trials"),
                "trials": verdict.trials,
                "complete": states.count("complete"),
                "diverged": sum(is_diverged(t) for t in result),
                "pruned": states.count("pruned"),
                "failed": sum(
                    s == "fail" and not is_diverged(t) for s, t in zip(states, result, strict=True)
                ),
                "best_value": values.best,
                "first_half_best": values.first_half_best,
                "second_half_best": values.second_half_best,
                "second_half_gain": values.gain,
                "tolerance": values.tolerance,
                "saturated": verdict.saturated,
                "verdict": verdict.verdict,
                "trial_hours": trial_hours(result),
                "chosen_trial": None if chosen is None else chosen.number,
                "chosen_value": None if chosen is None else chosen.value,
                "chosen_fresh_seed_mean": fresh,
            }
        )
    return pd.DataFrame(rows, columns=list(SATURATION_COLUMNS))


def trial_hours(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The summed wall-clock hours of ``trials`` (start to completion; each trial is one 1-thread
    process, so on an otherwise idle core this is its CPU time)."""
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    return seconds / 3600.0


def saturation_markdown(table: pd.DataFrame) -> str:
    """``table`` (from :func:`saturation_table`) as a markdown table."""
    header = ["study", "trials", "diverged", "pruned", "best", "2nd-half gain", "verdict"]
    header += ["chosen trial", "trial hours"]
    rows = []
    for row in table.itertuples(index=False):
        gain = "—" if pd.isna(row.second_half_gain) else f"{row.second_half_gain:.1%}"
        best = "—" if pd.isna(row.best_value) else f"{row.best_value:.4g}"
        cells = [row.study, row.trials, row.diverged, row.pruned, best, gain, row.verdict]
        rows.append([*cells, _chosen_cell(row), f"{row.trial_hours:.2f}"])
    return markdown_table(header, rows, style="compact") + "\n"


def _chosen_cell(row: Any) -> str:
    """``N`` (chosen by its value), ``N: fresh-seed mean M`` (chosen by the re-runs), or —."""
    if pd.isna(row.chosen_trial):
        return "—"
    if pd.isna(row.chosen_fresh_seed_mean):
        return f"{int(row.chosen_trial)}"
    return f"{int(row.chosen_trial)}: fresh-seed mean {row.chosen_fresh_seed_mean:.4g}"


def _palette() -> list[str]:
    return [f"C{i}" for i in range(10)]
