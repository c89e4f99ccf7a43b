"""A benchmark report from the tidy results table: CSV tables, a markdown summary, figures.

:func:`build_report` writes, into one folder:

=====================  =====================================================================
``final_and_best.csv`` :func:`~harness.results.derived.final_and_best` (evaluated splits)
``summary.csv``        :func:`~harness.results.derived.seed_summary` of ``final_value``,
                       ``best_value`` and ``final_wall_time_s``
``speedup.csv``        :func:`~harness.results.derived.speedup` on ``target_split`` loss, per
                       task against that task's reference optimizer
``time_to_target.csv`` :func:`~harness.results.derived.time_to_target`, each task's target being
                       its speedup target (the reference's mean final ``target_split`` loss)
``summary.md``         per task, a table of optimizer settings (see :func:`summary_markdown`)
``curves_<task>_<metric>.png``  :func:`~harness.results.plots.plot_task_curves`, per task and
                       evaluated metric (loss first)
=====================  =====================================================================

Nothing is written to the output folder unless everything could be built. Figures named
``curves_*.png`` that this report did not draw (tasks no longer in the table) are removed, so
the folder's figures always match its tables.

Rows tagged :data:`NOT_REPRODUCED_TAG` (a suite kept them from an earlier run because it could
not rerun their task) and tasks a suite skipped without earlier rows are listed in a *Not
reproduced* section at the top of ``summary.md`` (:func:`not_reproduced_lines`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.results.derived import (
    RUN_INFO_COLUMNS,
    config_labels,
    final_and_best,
    require_columns,
    seed_summary,
    speedup,
    split_rank,
    time_to_target,
)
from harness.results.plots import (
    BAND_DESCRIPTION,
    LEARNING_RATE_DESCRIPTION,
    curve_statistics,
    plot_learning_rates,
    plot_task_curves,
)
from harness.results.schema import SPLIT_TRAIN_BATCH
from harness.util import markdown_table

NOT_REPRODUCED_TAG = "not_reproduced"
"""The tag of rows a suite kept from an earlier run, not rerun (see :mod:`harness.suite`)."""

DEFAULT_REFERENCE = "adam"
"""The reference optimizer of a task when none is given, if it was run on the task."""

SUMMARY_VALUES = ("final_value", "best_value", "final_wall_time_s")
TARGET_METRIC = "loss"
REQUIRED_COLUMNS = (*RUN_INFO_COLUMNS, "step", "wall_time_s", "split", "metric", "value")
PROVENANCE_FIELDS = (
    ("device", "device"),
    ("threads", "torch threads"),
    ("torch_version", "torch"),
    ("git_commit", "git commit"),
    ("harness_version", "harness"),
    ("schema_version", "schema"),
)


def build_report(
    frame: pd.DataFrame,
    out_dir: str | Path,
    reference: str | Mapping[str, str] | None = None,
    target_split: str = "train",
    skipped: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the report files (see the module doc) into ``out_dir`` and return their paths.

    ``reference``: the optimizer every task's speedup is measured against (``UsageError`` if a
    task has no runs of it), or a mapping task -> optimizer. When None (or for a task the mapping
    does not name), each task's reference is :data:`DEFAULT_REFERENCE` if it
    was run on that task, else the alphabetically first optimizer run on it (see
    :func:`default_reference`); ``speedup.csv`` names it in its ``reference`` column.
    ``target_split``: the split whose loss defines targets, time-to-target and speedup.
    ``skipped``: tasks the run that made ``frame`` could not run, with the reason (see
    :func:`not_reproduced_lines`).

    Everything is first built in a temporary folder next to ``out_dir``; only when all of it
    succeeded are the files moved into ``out_dir`` (created if needed) with ``os.replace``, so a
    failure leaves ``out_dir`` untouched. Existing files of the same names are replaced, stale
    ``curves_*.png`` figures removed; other files in ``out_dir`` are left alone.
    """
    _check_frame(frame)
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise UsageError(f"report folder {str(target)!r} exists and is not a folder")
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(dir=parent, prefix=f".{target.absolute().name}.", suffix=".tmp")
    )
    try:
        names = _write_report(frame, staging, reference, target_split, skipped or {})
        target.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, target / name)
        for stale in sorted(set(p.name for p in target.glob("curves_*.png")) - set(names)):
            (target / stale).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / name for name in names]


def default_reference(optimizers: Sequence[str]) -> str:
    """:data:`DEFAULT_REFERENCE` if it is among ``optimizers``, else the first alphabetically."""
    if DEFAULT_REFERENCE in optimizers:
        return DEFAULT_REFERENCE
    return sorted(optimizers)[0]


def _check_frame(frame: pd.DataFrame) -> None:
    require_columns(frame, REQUIRED_COLUMNS, "build_report")
    if frame.empty:
        raise UsageError("build_report: the results table has no rows")


def _write_report(
    frame: pd.DataFrame,
    folder: Path,
    reference: str | Mapping[str, str] | None,
    target_split: str,
    skipped: Mapping[str, str],
) -> list[str]:
    """Write every report file into ``folder``; return their names in writing order."""
    runs = final_and_best(frame)
    summary = seed_summary(runs, SUMMARY_VALUES)
    speed = speedup_by_task(frame, reference, target_split)
    targets = dict(zip(speed["task"], speed["target"], strict=True))
    reached = time_to_target(frame, targets, split=target_split, metric=TARGET_METRIC)
    tables = {
        "final_and_best.csv": runs,
        "summary.csv": summary,
        "speedup.csv": speed,
        "time_to_target.csv": reached,
    }
    for name, table in tables.items():
        table.to_csv(folder / name, index=False)
    figures = _write_figures(frame, folder)
    markdown = summary_markdown(frame, runs, speed, figures, target_split, skipped)
    (folder / "summary.md").write_text(markdown, encoding="utf-8")
    return [*tables, "summary.md", *(name for names in figures.values() for name in names)]


def speedup_by_task(
    frame: pd.DataFrame, reference: str | Mapping[str, str] | None, split: str
) -> pd.DataFrame:
    """:func:`~harness.results.derived.speedup` on ``split`` loss, one task at a time.

    ``reference``: one optimizer for all tasks, or a mapping task -> optimizer; a task without
    one gets :func:`default_reference` of its optimizers.
    """
    tables = []
    for task, rows in frame.groupby("task", sort=True):
        chosen = reference.get(str(task)) if isinstance(reference, Mapping) else reference
        task_reference = chosen or default_reference(list(rows["optimizer"].unique()))
        tables.append(speedup(rows, task_reference, split=split, metric=TARGET_METRIC))
    return pd.concat(tables, ignore_index=True)


def _write_figures(frame: pd.DataFrame, folder: Path) -> dict[str, list[str]]:
    """Write each task's curves; return task -> file names, loss first."""
    evaluated = frame[frame["split"] != SPLIT_TRAIN_BATCH]
    figures: dict[str, list[str]] = {}
    for task, rows in evaluated.groupby("task", sort=True):
        figures[str(task)] = []
        for metric in _metric_order(rows["metric"].unique()):
            if curve_statistics(rows, str(task), metric).empty:
                continue  # nothing finite to draw (every run diverged at once)
            name = f"curves_{_safe_name(str(task))}_{_safe_name(metric)}.png"
            plot_task_curves(rows, str(task), folder / name, metric=metric)
            figures[str(task)].append(name)
        rates = learning_rate_schedules(frame[frame["task"] == task])
        if rates:
            name = f"curves_{_safe_name(str(task))}_learning_rate.png"
            plot_learning_rates(rates, str(task), folder / name)
            figures[str(task)].append(name)
    return figures


def learning_rate_schedules(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per optimizer setting of ``frame`` (label as in the curves) whose optimizer states its
    learning rate (a ``learning_rate(step)`` method: the Adam family, learned families with a
    learned schedule), that rate for updates 1..budget_steps. Settings whose optimizer cannot be
    built here (a plugin not loaded, a checkpoint not present) are left out."""
    from harness.registry import create_optimizer

    labels = config_labels(frame)
    settings = frame[["optimizer", "hparams", "budget_steps"]].drop_duplicates(
        ["optimizer", "hparams"]
    )
    rates: dict[str, np.ndarray] = {}
    for optimizer, hparams, steps in settings.itertuples(index=False):
        try:
            built = create_optimizer(str(optimizer), **json.loads(hparams))
        except Exception:  # a figure is not worth failing the report
            continue
        schedule = getattr(built, "learning_rate", None)
        if schedule is None or not steps or math.isnan(float(steps)) or schedule(1) is None:
            continue
        values = np.array([schedule(k) for k in range(1, int(steps) + 1)], dtype=float)
        rates[labels[(str(optimizer), str(hparams))]] = values
    return rates


def _metric_order(metrics: Sequence[str]) -> list[str]:
    return sorted(metrics, key=lambda m: (m != TARGET_METRIC, m))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------


def summary_markdown(
    frame: pd.DataFrame,
    runs: pd.DataFrame,
    speed: pd.DataFrame,
    figures: dict[str, list[str]],
    target_split: str = "train",
    skipped: Mapping[str, str] | None = None,
) -> str:
    """The report's markdown: provenance, what was not reproduced (if anything), definitions,
    then one section per task.

    Each task's table has one row per optimizer setting: its number of seeds and diverged runs,
    the final loss on each evaluated split and the final test accuracy (mean ± std over seeds),
    how many seeds reached the target, the mean steps and seconds to reach it and the speedups
    (from ``speed``, the :func:`speedup_by_task` table); then the task's figures.
    """
    lines = [
        "# Benchmark report",
        "",
        _overview(runs),
        "",
        f"Provenance: {provenance_line(frame)}",
        "",
        *not_reproduced_section(frame, skipped or {}),
        *tuning_section(frame),
        *_definitions(target_split),
    ]
    kept = not_reproduced(frame)
    for task, task_runs in runs.groupby("task", sort=True):
        section = _task_section(str(task), task_runs, speed, figures.get(str(task), []))
        if str(task) in kept:
            section[0] += " (NOT rerun: kept from an earlier run)"
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def _overview(runs: pd.DataFrame) -> str:
    per_run = runs.drop_duplicates("run_id")
    statuses = per_run["status"].value_counts().sort_index()
    status_text = ", ".join(f"{count} {status}" for status, count in statuses.items())
    return (
        f"{len(per_run)} runs ({status_text}) on {per_run['task'].nunique()} task(s) with "
        f"{per_run['optimizer'].nunique()} optimizer(s)."
    )


def provenance_line(frame: pd.DataFrame) -> str:
    """One line with the device, threads, torch version, git commit and harness version.

    A field with several values in ``frame`` lists them all and is flagged ``MIXED``: timings
    from different machines or settings are not comparable.
    """
    parts = []
    for column, label in PROVENANCE_FIELDS:
        if column not in frame.columns:
            parts.append(f"{label}: not recorded")
            continue
        values = sorted({str(v) for v in frame[column].dropna().unique()})
        text = " / ".join(values) if values else "not recorded"
        parts.append(f"{label}: {text}" + (" (MIXED)" if len(values) > 1 else ""))
    return "; ".join(parts) + "."


def not_reproduced(frame: pd.DataFrame) -> dict[str, str]:
    """Task -> the commits of its rows tagged :data:`NOT_REPRODUCED_TAG` (kept, not rerun)."""
    if "tags" not in frame.columns:
        return {}
    marked = frame["tags"].map(_is_marked)
    found: dict[str, str] = {}
    for task, rows in frame[marked].groupby("task", sort=True):
        commits = sorted({str(c)[:12] for c in rows.get("git_commit", pd.Series(["?"]))})
        found[str(task)] = ", ".join(commits)
    return found


def not_reproduced_lines(frame: pd.DataFrame, skipped: Mapping[str, str]) -> list[str]:
    """One markdown bullet per task whose numbers this run did not produce: kept from an
    earlier run (tagged rows), or missing altogether (``skipped`` without rows)."""
    kept = not_reproduced(frame)
    lines = []
    for task in sorted(set(kept) | set(skipped)):
        why = f" ({skipped[task]})" if task in skipped else ""
        if task in kept:
            runs = frame.loc[(frame["task"] == task) & frame["tags"].map(_is_marked), "run_id"]
            lines.append(
                f"- {task}: NOT rerun{why}; its {runs.nunique()} runs are kept from an earlier "
                f"run (git commit {kept[task]}), so its numbers here are that run's."
            )
        else:
            lines.append(f"- {task}: NOT run{why}; no earlier results were kept: it is missing.")
    return lines


def not_reproduced_section(frame: pd.DataFrame, skipped: Mapping[str, str]) -> list[str]:
    """The *Not reproduced* markdown section (no lines when everything was run)."""
    lines = not_reproduced_lines(frame, skipped)
    return ["## Not reproduced in this run", "", *lines, ""] if lines else []


def _is_marked(tags: object) -> bool:
    try:
        data = json.loads(tags) if isinstance(tags, str) and tags else {}
    except ValueError:
        return False
    return isinstance(data, dict) and NOT_REPRODUCED_TAG in data


def tuning_section(frame: pd.DataFrame) -> list[str]:
    """The *Tuning* markdown section: per tuning study the rows use, its trial count and its
    saturation verdict (from the rows' provenance tags); studies that are not saturated, or
    whose verdict the rows do not record (results from before the rule), are flagged. No lines
    when no row comes from a study."""
    studies: dict[str, dict] = {}
    for text in frame["tags"].drop_duplicates():
        try:
            tags = json.loads(text) if isinstance(text, str) and text else {}
        except json.JSONDecodeError:
            continue
        if isinstance(tags, dict) and "study" in tags:
            studies.setdefault(str(tags["study"]), tags)
    if not studies:
        return []
    unsaturated = [name for name, tags in studies.items() if tags.get("saturated") is not True]
    lines = ["## Tuning", ""]
    if unsaturated:
        lines += [
            f"**{len(unsaturated)} of {len(studies)} tuning studies are not shown to be "
            "saturated**: more tuning might improve those baselines (`lopt studies` has the "
            "curves).",
            "",
        ]
    else:
        lines += [f"Every one of the {len(studies)} tuning studies is saturated.", ""]
    body = [
        [
            name,
            str(tags.get("trials", "?")),
            str(tags.get("saturation", "NOT checked: tuned before the saturation rule")),
        ]
        for name, tags in sorted(studies.items())
    ]
    lines += [markdown_table(["study", "trials", "saturation"], body, ["left", "right", "left"])]
    return [*lines, ""]


def _definitions(target_split: str) -> list[str]:
    return [
        "Definitions: values are the last evaluation of each run, as mean ± std over seeds "
        "(std with ddof=1, left out for one seed; nan/inf when a seed diverged). The *target* of "
        f"a task is the reference optimizer's mean final {target_split} {TARGET_METRIC}. *Steps* "
        "and *seconds to target* are the first evaluation at or below it (timed training "
        "seconds, evaluation excluded), averaged over the seeds that reach it (*reached*). "
        "*Speedup* = the reference's mean time to target / this row's (> 1: faster than the "
        "reference).",
        "",
        f"Figures: {BAND_DESCRIPTION}; the learning-rate figure: {LEARNING_RATE_DESCRIPTION}.",
    ]


def _task_section(
    task: str, runs: pd.DataFrame, speed: pd.DataFrame, figures: list[str]
) -> list[str]:
    task_speed = speed[speed["task"] == task]
    reference = task_speed[task_speed["is_reference"]].iloc[0]
    labels = config_labels(runs)
    splits = sorted(runs.loc[runs["metric"] == TARGET_METRIC, "split"].unique(), key=split_rank)
    has_accuracy = bool(((runs["split"] == "test") & (runs["metric"] == "accuracy")).any())
    header = ["optimizer", "seeds", "diverged", *(f"{s} {TARGET_METRIC}" for s in splits)]
    header += ["test accuracy"] if has_accuracy else []
    header += ["reached", "steps to target", "seconds to target", "speedup (steps)"]
    header += ["speedup (s)"]
    rows = []
    for (optimizer, hparams), config_runs in runs.groupby(["optimizer", "hparams"], sort=True):
        label = labels[(str(optimizer), str(hparams))]
        config_speed = task_speed[
            (task_speed["optimizer"] == optimizer) & (task_speed["hparams"] == hparams)
        ]
        is_reference = bool(config_speed["is_reference"].any())
        row = [label + (" (reference)" if is_reference else "")]
        row += _seed_counts(config_runs)
        row += [_final_text(config_runs, s, TARGET_METRIC) for s in splits]
        row += [_final_text(config_runs, "test", "accuracy")] if has_accuracy else []
        row += _speed_cells(config_speed)
        rows.append(row)
    align = ["left"] + ["right"] * (len(header) - 1)
    lines = [
        f"## {task}",
        "",
        f"Reference: {labels.get((reference['optimizer'], reference['hparams']), '?')}; "
        f"target {reference['split']} {reference['metric']} = {_number(reference['target'])}.",
        "",
        markdown_table(header, rows, align),
    ]
    for name in figures:
        what = "learning rates" if name.endswith("_learning_rate.png") else "curves"
        lines += ["", f"![{task} {what}]({name})"]
    return lines


def _seed_counts(runs: pd.DataFrame) -> list[str]:
    per_run = runs.drop_duplicates("run_id")
    return [str(len(per_run)), str(int((per_run["status"] == "diverged").sum()))]


def _final_text(runs: pd.DataFrame, split: str, metric: str) -> str:
    values = runs.loc[(runs["split"] == split) & (runs["metric"] == metric), "final_value"]
    if values.empty:
        return "—"
    values = values.astype(float)
    return mean_std_text(values.mean(skipna=False), values.std(ddof=1, skipna=False))


def _speed_cells(speed: pd.DataFrame) -> list[str]:
    if speed.empty:
        return ["—"] * 5
    row = speed.iloc[0]
    return [
        f"{int(row['n_reached'])}/{int(row['n_seeds'])}",
        _number(row["mean_steps_to_target"], "{:.0f}", "—"),
        _number(row["mean_seconds_to_target"], "{:.3g}", "—"),
        _number(row["speedup_steps"], "{:.2f}x", "—"),
        _number(row["speedup_seconds"], "{:.2f}x", "—"),
    ]


def mean_std_text(mean: float, std: float) -> str:
    """``mean ± std`` with 4 significant digits (2 for std); only the mean if std is NaN."""
    if math.isnan(std):
        return _number(mean)
    if std <= 1e-9 * abs(mean):  # identical seeds; do not print rounding noise like 1.4e-16
        std = 0.0
    return f"{_number(mean)} ± {_number(std, '{:.2g}')}"


def _number(value: float, fmt: str = "{:.4g}", missing: str = "nan") -> str:
    """``value`` formatted with ``fmt``; ``missing`` for NaN."""
    value = float(value)
    return missing if math.isnan(value) else fmt.format(value)
