"""Learning-curve figures from the tidy results table.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend
change, never a window. Files are written atomically (:func:`harness.results.io.write_atomically`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.errors import UsageError
from harness.results.derived import (
    config_labels,
    higher_is_better,
    require_columns,
    sort_table,
    split_rank,
)
from harness.results.schema import SPLIT_TRAIN_BATCH
from harness.util import write_atomically

BAND_DESCRIPTION = "lines: mean over seeds, shaded: min–max over seeds"
STEP_LABEL = "step (optimizer updates)"
SECONDS_LABEL = "timed training time (s)"
CURVE_COLUMNS = (
    "optimizer",
    "hparams",
    "split",
    "step",
    "wall_time_s",
    "mean",
    "min",
    "max",
    "n_seeds",
)


def curve_statistics(frame: pd.DataFrame, task: str, metric: str = "loss") -> pd.DataFrame:
    """The curves :func:`plot_task_curves` draws, as a table.

    Input columns used: ``task, optimizer, hparams, seed, step, wall_time_s, split, metric,
    value``; only whole-split evaluations (not ``train_batch``) of ``task`` and ``metric``.

    Output: one row per ``optimizer, hparams, split, step`` with columns :data:`CURVE_COLUMNS`:
    ``mean``, ``min``, ``max`` of the value over the seeds evaluated at that step and
    ``n_seeds``, their number; ``wall_time_s`` is the mean over those seeds of the timed
    training seconds at that step. Non-finite values are left out, so a diverged seed's curve
    ends at its last finite value and later steps average over the other seeds. Runs that stop
    early (diverged, time limit) likewise drop out of the later steps.
    """
    columns = ("task", "optimizer", "hparams", "seed", "step", "wall_time_s", "split", "metric")
    require_columns(frame, (*columns, "value"), "curve_statistics")
    rows = frame[
        (frame["task"] == task)
        & (frame["metric"] == metric)
        & (frame["split"] != SPLIT_TRAIN_BATCH)
    ]
    values = rows["value"].astype(float)
    rows = rows.assign(value=values.where(np.isfinite(values)))
    rows = rows[rows["value"].notna()]
    grouped = rows.groupby(["optimizer", "hparams", "split", "step"], sort=True)
    table = grouped.agg(
        wall_time_s=("wall_time_s", "mean"),
        mean=("value", "mean"),
        min=("value", "min"),
        max=("value", "max"),
        n_seeds=("value", "size"),
    ).reset_index()
    return sort_table(table, ["optimizer", "hparams", "split", "step"])[list(CURVE_COLUMNS)]


def plot_task_curves(
    frame: pd.DataFrame, task: str, path: str | Path, metric: str = "loss"
) -> Path:
    """Draw ``task``'s ``metric`` curves into a PNG at ``path`` (written atomically).

    The figure is a grid: one row per evaluated split present (train, valid, test, then others),
    two columns, ``metric`` against steps and against timed training seconds. One line per
    optimizer setting (labelled by :func:`~harness.results.derived.config_labels`): the mean over
    seeds at each evaluation step, drawn at the mean wall-clock time of that step in the right
    column, with a band from the minimum to the maximum over seeds (see
    :func:`curve_statistics`). The y axis is logarithmic when the metric is minimised and every
    plotted value is positive. Raises ``UsageError`` when ``task`` has no finite evaluated
    ``metric`` values. Returns ``path``.
    """
    curves = curve_statistics(frame, task, metric)
    if curves.empty:
        raise UsageError(f"no finite {metric} evaluations of task {task!r} to plot")
    figure = _draw(curves, task, metric)
    path = Path(path)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def _draw(curves: pd.DataFrame, task: str, metric: str) -> Figure:
    splits = sorted(curves["split"].unique(), key=split_rank)
    height = 1.0 + 3.2 * len(splits)
    figure = Figure(figsize=(11.0, height))
    FigureCanvasAgg(figure)
    # fixed margins (in inches, converted to fractions): a layout engine costs ~1 s per figure
    axes = figure.subplots(len(splits), 2, squeeze=False)
    figure.subplots_adjust(
        left=0.08, right=0.98, bottom=0.6 / height, top=1 - 0.75 / height, hspace=0.45, wspace=0.22
    )
    labels = config_labels(curves)
    colours = _colours(list(labels))
    log_scale = not higher_is_better(metric) and bool((curves["min"] > 0).all())
    for row, split in enumerate(splits):
        for column, (x, x_label) in enumerate(
            [("step", STEP_LABEL), ("wall_time_s", SECONDS_LABEL)]
        ):
            axis = axes[row, column]
            _draw_panel(axis, curves[curves["split"] == split], x, labels, colours)
            axis.set_title(f"{split} {metric} vs {'steps' if column == 0 else 'time'}")
            axis.set_xlabel(x_label)
            axis.set_ylabel(f"{split} {metric}")
            axis.set_yscale("log" if log_scale else "linear")
            axis.grid(True, alpha=0.3)
    axes[0, 1].legend(loc="best", fontsize="small")
    figure.suptitle(f"{task}: {metric} ({BAND_DESCRIPTION})")
    return figure


def _draw_panel(
    axis: Axes,
    curves: pd.DataFrame,
    x: str,
    labels: dict[tuple[str, str], str],
    colours: dict[tuple[str, str], tuple[float, ...]],
) -> None:
    for (optimizer, hparams), curve in curves.groupby(["optimizer", "hparams"], sort=True):
        config = (str(optimizer), str(hparams))
        colour = colours[config]
        axis.plot(curve[x], curve["mean"], color=colour, label=labels[config], marker=".")
        axis.fill_between(curve[x], curve["min"], curve["max"], color=colour, alpha=0.2)


def _colours(configs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, ...]]:
    """A fixed colour per optimizer setting, the same in every panel."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {config: palette(i % palette.N) for i, config in enumerate(sorted(configs))}


LEARNING_RATE_DESCRIPTION = (
    "the learning rate of each update as the optimizer computes it (Adam-family rates multiply "
    "Adam's normalised direction; a learned family's is its learned schedule, its learned "
    "correction aside)"
)


def plot_learning_rates(rates: dict[str, np.ndarray], task: str, path: str | Path) -> Path:
    """Draw one line per optimizer setting (label -> the rate of updates 1..n, ``(n,)``) on a
    logarithmic y axis into a PNG at ``path`` (written atomically). Returns ``path``."""
    if not rates:
        raise UsageError(f"no learning-rate schedule of task {task!r} to plot")
    figure = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, values in sorted(rates.items()):
        steps = np.arange(1, len(values) + 1)
        axes.plot(steps, values, label=label, linewidth=1.5)
    axes.set_yscale("log")
    axes.set_xlabel(STEP_LABEL)
    axes.set_ylabel("learning rate")
    axes.set_title(f"{task}: learning-rate schedules", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
