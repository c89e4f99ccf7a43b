"""Tables derived from the tidy results table (see :mod:`harness.results.schema`).

Every function here is pure: it takes a tidy frame (or a table derived from one), never modifies
it, and returns a new :class:`pandas.DataFrame` with a fixed set of columns, sorted
deterministically. Units: ``*_step`` / ``steps_*`` columns count optimizer updates,
``*_wall_time_s`` / ``seconds_*`` columns are timed training seconds (evaluation excluded, see
docs/timing.md), ``*_value`` columns are in the unit of their ``metric``.

Whether a smaller or a larger value is better is decided by :data:`HIGHER_IS_BETTER` (metrics
named there are maximised, all others, ``loss`` included, are minimised).

Time-to-target is measured at evaluation points only: a run "reaches" a target at the first
*evaluation* whose value is at or beyond it, so its resolution is the run's evaluation interval
(the true crossing may lie up to ``eval_every`` steps earlier).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.results.schema import SPLIT_TRAIN_BATCH, STATUS_DIVERGED

HIGHER_IS_BETTER: frozenset[str] = frozenset({"accuracy"})
"""Metrics for which larger values are better; every other metric is minimised."""

SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "test", SPLIT_TRAIN_BATCH)
"""The order splits are listed in; other splits follow, alphabetically."""

RUN_INFO_COLUMNS: tuple[str, ...] = (
    "run_id",
    "suite",
    "task",
    "optimizer",
    "hparams",
    "seed",
    "status",
)
"""Columns that are constant within a run and are carried into per-run tables."""

SEED_GROUP_COLUMNS: tuple[str, ...] = ("task", "optimizer", "hparams", "split", "metric")
"""What :func:`seed_summary` groups by: everything that identifies a run except its seed."""

CONFIG_COLUMNS: tuple[str, ...] = ("task", "optimizer", "hparams")

FINAL_AND_BEST_COLUMNS: tuple[str, ...] = (
    *RUN_INFO_COLUMNS,
    "split",
    "metric",
    "final_value",
    "final_step",
    "final_wall_time_s",
    "best_value",
    "best_step",
    "best_wall_time_s",
)

TIME_TO_TARGET_COLUMNS: tuple[str, ...] = (
    *RUN_INFO_COLUMNS,
    "split",
    "metric",
    "target",
    "reached",
    "steps_to_target",
    "seconds_to_target",
    "final_step",
    "final_wall_time_s",
)

SPEEDUP_COLUMNS: tuple[str, ...] = (
    *CONFIG_COLUMNS,
    "reference",
    "reference_hparams",
    "is_reference",
    "split",
    "metric",
    "target",
    "n_seeds",
    "n_reached",
    "fraction_reached",
    "mean_steps_to_target",
    "mean_seconds_to_target",
    "speedup_steps",
    "speedup_seconds",
)

_MEASUREMENT_COLUMNS = (*RUN_INFO_COLUMNS, "step", "wall_time_s", "split", "metric", "value")
_KEY = ["run_id", "split", "metric"]


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better (see :data:`HIGHER_IS_BETTER`)."""
    return metric in HIGHER_IS_BETTER


# --------------------------------------------------------------------------------------------
# final and best values
# --------------------------------------------------------------------------------------------


def final_and_best(frame: pd.DataFrame, *, include_train_batch: bool = False) -> pd.DataFrame:
    """The last and the best value of each run on each split and metric.

    Input columns used: ``run_id, suite, task, optimizer, hparams, seed, status, step,
    wall_time_s, split, metric, value``. Rows of split ``train_batch`` (minibatch losses) are
    left out unless ``include_train_batch``.

    Output: one row per ``run_id`` x ``split`` x ``metric`` with columns
    :data:`FINAL_AND_BEST_COLUMNS`:

    * ``final_value``, ``final_step``, ``final_wall_time_s``: the measurement with the largest
      step. It is whatever was measured, so a diverged run's final value may be NaN or inf.
    * ``best_value``, ``best_step``, ``best_wall_time_s``: the minimum (maximum for metrics in
      :data:`HIGHER_IS_BETTER`) over the run's *finite* values, at its earliest step if it
      repeats. NaN when the run has no finite value. ``best_step`` is a float so it can be NaN.

    Rows are sorted by task, optimizer, hparams, seed, run_id, split (:data:`SPLIT_ORDER`) and
    metric. ``UsageError`` if a run has a split and metric twice at one step (the table holds
    the run twice).
    """
    require_columns(frame, _MEASUREMENT_COLUMNS, "final_and_best")
    rows = _sorted_measurements(frame, include_train_batch)
    final = rows.groupby(_KEY, sort=False).tail(1)
    final = final[[*RUN_INFO_COLUMNS, "split", "metric", "value", "step", "wall_time_s"]].rename(
        columns={"value": "final_value", "step": "final_step", "wall_time_s": "final_wall_time_s"}
    )
    table = final.merge(_best_rows(rows), on=_KEY, how="left", validate="one_to_one")
    table["best_step"] = table["best_step"].astype(float)
    return _sort_runs(table)[list(FINAL_AND_BEST_COLUMNS)]


def _best_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``run_id, split, metric, best_value, best_step, best_wall_time_s`` over finite values."""
    finite = rows[np.isfinite(rows["value"])]
    sign = np.where(finite["metric"].map(higher_is_better).astype(bool), -1.0, 1.0)
    score = pd.Series(finite["value"].to_numpy() * sign, index=finite.index)
    # idxmin gives the first occurrence, and rows are sorted by step: the earliest best step.
    best_index = score.groupby([finite[k] for k in _KEY], sort=False).idxmin()
    best = rows.loc[best_index.to_numpy(), [*_KEY, "value", "step", "wall_time_s"]]
    return best.rename(
        columns={"value": "best_value", "step": "best_step", "wall_time_s": "best_wall_time_s"}
    )


# --------------------------------------------------------------------------------------------
# time to target
# --------------------------------------------------------------------------------------------


def time_to_target(
    frame: pd.DataFrame,
    target: float | Mapping[str, float],
    split: str = "train",
    metric: str = "loss",
) -> pd.DataFrame:
    """When each run first reached ``target`` on ``split``/``metric``.

    Input columns used: those of :func:`final_and_best`. ``target`` is one value for every task
    or a mapping task -> value (``UsageError`` if a task in the frame has none). A run reaches
    the target at its first measurement (in step order) with ``value <= target``
    (``>= target`` for metrics in :data:`HIGHER_IS_BETTER`); NaN and inf never reach a finite
    target. Runs without any ``split``/``metric`` measurement are left out.

    Output: one row per run with columns :data:`TIME_TO_TARGET_COLUMNS`: ``reached`` (bool),
    ``steps_to_target`` (optimizer updates, float, NaN if not reached), ``seconds_to_target``
    (timed training seconds, NaN if not reached), and ``final_step``/``final_wall_time_s``, the
    run's last measurement on the split (how long it tried). Resolution: the evaluation
    interval (see the module doc).
    """
    require_columns(frame, _MEASUREMENT_COLUMNS, "time_to_target")
    rows = _sorted_measurements(frame, include_train_batch=True)
    rows = rows[(rows["split"] == split) & (rows["metric"] == metric)]
    targets = _targets_for(rows["task"], target)
    hit = rows["value"] >= targets if higher_is_better(metric) else rows["value"] <= targets
    first_hit = rows[hit.to_numpy()].groupby("run_id", sort=False).head(1)
    first_hit = first_hit[["run_id", "step", "wall_time_s"]].rename(
        columns={"step": "steps_to_target", "wall_time_s": "seconds_to_target"}
    )
    last = rows.groupby("run_id", sort=False).tail(1)
    table = last[[*RUN_INFO_COLUMNS, "split", "metric", "step", "wall_time_s"]].rename(
        columns={"step": "final_step", "wall_time_s": "final_wall_time_s"}
    )
    table["target"] = targets.loc[last.index].to_numpy()
    table = table.merge(first_hit, on="run_id", how="left", validate="one_to_one")
    table["steps_to_target"] = table["steps_to_target"].astype(float)
    table["seconds_to_target"] = table["seconds_to_target"].astype(float)
    table["reached"] = table["steps_to_target"].notna()
    return _sort_runs(table)[list(TIME_TO_TARGET_COLUMNS)]


def _targets_for(tasks: pd.Series, target: float | Mapping[str, float]) -> pd.Series:
    """The target of each row's task, as floats aligned with ``tasks``."""
    if not isinstance(target, Mapping):
        return pd.Series(float(target), index=tasks.index)
    missing = sorted(set(tasks) - set(target))
    if missing:
        raise UsageError(
            f"no target for task(s) {', '.join(missing)}; "
            f"targets given for: {', '.join(sorted(target)) or 'none'}"
        )
    return tasks.map({task: float(value) for task, value in target.items()}).astype(float)


# --------------------------------------------------------------------------------------------
# summaries over seeds
# --------------------------------------------------------------------------------------------


def seed_summary(
    table: pd.DataFrame,
    value_columns: Sequence[str],
    by: Sequence[str] = SEED_GROUP_COLUMNS,
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``value_columns``.

    Input: a per-run table such as :func:`final_and_best`'s or :func:`time_to_target`'s; the
    columns ``by`` and ``value_columns`` are used (``UsageError`` if one is missing).

    Output: one row per group of ``by`` (default :data:`SEED_GROUP_COLUMNS`: everything that
    identifies a configuration except the seed) with ``n_seeds`` (the number of rows, i.e. runs,
    in the group), ``n_diverged`` (runs whose ``status`` is ``diverged``; only when the table has
    a ``status`` column) and, for each value column ``c``, ``c_mean`` and ``c_std`` (ddof=1, so
    NaN for a single seed), in the value column's unit. A NaN value makes its group's mean and std
    NaN and an inf makes the mean inf: a diverged seed is never silently dropped. Note that runs
    with different step budgets but equal ``by`` columns are pooled; filter first if that matters.
    """
    require_columns(table, (*by, *value_columns), "seed_summary")
    grouped = table.groupby(list(by), sort=True, dropna=False)
    summary = grouped.size().rename("n_seeds").to_frame()
    if "status" in table.columns:
        diverged = (table["status"] == STATUS_DIVERGED).groupby(
            [table[c] for c in by], sort=True, dropna=False
        )
        summary["n_diverged"] = diverged.sum().astype(int)
    for column in value_columns:
        values = grouped[column]
        summary[f"{column}_mean"] = values.agg(lambda s: s.astype(float).mean(skipna=False))
        summary[f"{column}_std"] = values.agg(lambda s: s.astype(float).std(ddof=1, skipna=False))
    return sort_table(summary.reset_index(), by)


# --------------------------------------------------------------------------------------------
# speedup against a reference optimizer
# --------------------------------------------------------------------------------------------


def speedup(
    frame: pd.DataFrame,
    reference: str,
    split: str = "train",
    metric: str = "loss",
) -> pd.DataFrame:
    """How much faster each optimizer reaches what the ``reference`` optimizer ends at.

    Input columns used: those of :func:`final_and_best`. Definitions, per task:

    1. Reference setting: the ``reference`` optimizer's runs on the task. If it was run with
       several ``hparams``, the setting with the best mean final value (finite values only; ties
       go to the alphabetically first ``hparams``) is the reference (``reference_hparams``).
    2. ``target``: the mean over that setting's runs (seeds) of the final ``split``/``metric``
       value, over its finite final values only (NaN, so nothing reaches it, if there are none).
    3. For every ``task, optimizer, hparams`` (the reference included), each run's time to the
       target as in :func:`time_to_target` (first evaluation at or beyond the target).
       ``n_seeds``: its runs, ``n_reached``: those that reach the target, ``fraction_reached``:
       their ratio. ``mean_steps_to_target`` / ``mean_seconds_to_target``: the means over the
       runs that reach it (NaN if none does); runs that never reach it are not in the mean, so
       read them together with ``fraction_reached``.
    4. ``speedup_seconds`` = reference's ``mean_seconds_to_target`` / this row's
       ``mean_seconds_to_target`` (> 1: faster than the reference; NaN if this optimizer never
       reaches the target), ``speedup_steps`` likewise with steps. The reference's own row
       measures how long it takes to reach its own mean final value (at most its budget; at
       least one of its runs reaches it, since some final value is <= the mean) and has
       speedup 1.

    Seconds are comparable only between runs on the same device and thread count (see the
    provenance columns). Raises ``UsageError`` if a task has no runs of ``reference``, or none
    with a ``split``/``metric`` measurement.

    Output: one row per ``task, optimizer, hparams`` with columns :data:`SPEEDUP_COLUMNS`.
    """
    require_columns(frame, _MEASUREMENT_COLUMNS, "speedup")
    _check_reference_present(frame, reference)
    finals = final_and_best(frame, include_train_batch=True)
    finals = finals[(finals["split"] == split) & (finals["metric"] == metric)]
    references = {
        task: _reference_setting(finals[finals["task"] == task], task, reference, split, metric)
        for task in sorted(frame["task"].unique())
    }
    targets = {task: target for task, (_hparams, target) in references.items()}
    reached = time_to_target(frame, targets, split=split, metric=metric)
    table = _reach_statistics(reached)
    table["reference"] = reference
    table["reference_hparams"] = table["task"].map(
        {task: hparams for task, (hparams, _target) in references.items()}
    )
    table["target"] = table["task"].map(targets).astype(float)
    table["is_reference"] = (table["optimizer"] == reference) & (
        table["hparams"] == table["reference_hparams"]
    )
    table["split"], table["metric"] = split, metric
    return _add_speedups(table)[list(SPEEDUP_COLUMNS)]


def _check_reference_present(frame: pd.DataFrame, reference: str) -> None:
    for task, optimizers in frame.groupby("task", sort=True)["optimizer"]:
        present = sorted(set(optimizers))
        if reference not in present:
            raise UsageError(
                f"task {task!r} has no runs of the reference optimizer {reference!r}; "
                f"optimizers present: {', '.join(present)}"
            )


def _reference_setting(
    finals: pd.DataFrame, task: str, reference: str, split: str, metric: str
) -> tuple[str, float]:
    """``(hparams, target)`` of the reference's best setting on one task (see :func:`speedup`)."""
    runs = finals[finals["optimizer"] == reference]
    if runs.empty:
        raise UsageError(
            f"task {task!r}: the reference optimizer {reference!r} has no {split} {metric} "
            "measurements"
        )
    values = runs["final_value"].where(np.isfinite(runs["final_value"]))
    means = values.groupby(runs["hparams"], sort=True).mean()
    ranked = means.sort_values(ascending=not higher_is_better(metric), kind="stable")
    return str(ranked.index[0]), float(ranked.iloc[0])


def _reach_statistics(reached: pd.DataFrame) -> pd.DataFrame:
    """Per ``task, optimizer, hparams``: counts and means over the runs that reached."""
    grouped = reached.groupby(list(CONFIG_COLUMNS), sort=True)
    table = grouped.agg(
        n_seeds=("run_id", "size"),
        n_reached=("reached", "sum"),
        mean_steps_to_target=("steps_to_target", "mean"),
        mean_seconds_to_target=("seconds_to_target", "mean"),
    ).reset_index()
    table["n_reached"] = table["n_reached"].astype(int)
    table["fraction_reached"] = table["n_reached"] / table["n_seeds"]
    return table


def _add_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """``speedup_steps`` and ``speedup_seconds``: the reference row's means over each row's."""
    reference_rows = table[table["is_reference"]].set_index("task")
    for unit in ("steps", "seconds"):
        mean = f"mean_{unit}_to_target"
        reference_mean = table["task"].map(reference_rows[mean]).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"speedup_{unit}"] = reference_mean.to_numpy() / table[mean].to_numpy()
    return table


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------


def config_labels(table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """A short label for each ``(optimizer, hparams)`` pair in ``table``.

    The label is the optimizer's name when it appears with one ``hparams`` only, otherwise the
    name followed by the hyperparameters that differ between its settings, e.g.
    ``adam lr=0.001``.
    """
    require_columns(table, ("optimizer", "hparams"), "config_labels")
    pairs = table[["optimizer", "hparams"]].drop_duplicates()
    labels: dict[tuple[str, str], str] = {}
    for optimizer, settings in pairs.groupby("optimizer", sort=True)["hparams"]:
        labels.update(_labels_for(str(optimizer), [str(h) for h in settings]))
    return labels


def _labels_for(optimizer: str, settings: list[str]) -> dict[tuple[str, str], str]:
    if len(settings) == 1:
        return {(optimizer, settings[0]): optimizer}
    parsed = [_parse_hparams(s) for s in settings]
    keys = sorted({k for p in parsed for k in p})
    differing = [k for k in keys if len({json.dumps(p.get(k)) for p in parsed}) > 1]
    labels = {}
    for raw, params in zip(settings, parsed, strict=True):
        detail = ",".join(f"{k}={params.get(k)}" for k in differing) if differing else raw
        labels[(optimizer, raw)] = f"{optimizer} {detail}"
    return labels


def _parse_hparams(hparams: str) -> dict[str, object]:
    try:
        parsed = json.loads(hparams)
    except (TypeError, ValueError):
        return {"hparams": hparams}
    return parsed if isinstance(parsed, dict) else {"hparams": hparams}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def split_rank(split: str) -> tuple[int, str]:
    """Sort key that puts splits in :data:`SPLIT_ORDER`, unknown ones after, alphabetically."""
    split = str(split)
    if split in SPLIT_ORDER:
        return (SPLIT_ORDER.index(split), split)
    return (len(SPLIT_ORDER), split)


def sort_table(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``table`` sorted (stably) by ``keys``, a ``split`` column in :data:`SPLIT_ORDER`."""

    def key(column: pd.Series) -> pd.Series:
        if column.name != "split":
            return column
        return column.map(lambda s: f"{split_rank(s)[0]:03d}{split_rank(s)[1]}")

    return table.sort_values(list(keys), kind="stable", key=key).reset_index(drop=True)


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """``UsageError`` naming ``what`` and the missing columns unless ``table`` has ``columns``."""
    missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
    if missing:
        raise UsageError(f"{what}: the table lacks the column(s) {', '.join(missing)}")


def _sorted_measurements(frame: pd.DataFrame, include_train_batch: bool) -> pd.DataFrame:
    """The measurement rows sorted by run, split, metric and step, with a fresh 0..n-1 index.

    ``UsageError`` if a run measured a split and metric twice at one step: the runner never does,
    so the table holds one run twice (appended twice, or rerun with the same ``run_id``).
    """
    rows = frame if include_train_batch else frame[frame["split"] != SPLIT_TRAIN_BATCH]
    _check_unique_measurements(rows)
    rows = rows.sort_values([*_KEY, "step"], kind="stable").reset_index(drop=True)
    rows["value"] = rows["value"].astype(float)
    return rows


def _check_unique_measurements(rows: pd.DataFrame) -> None:
    repeated = rows.duplicated([*_KEY, "step"])
    if repeated.any():
        first = rows[repeated].iloc[0]
        raise UsageError(
            f"run {first['run_id']!r} has {first['split']} {first['metric']} at step "
            f"{first['step']} more than once ({int(repeated.sum())} repeated measurement(s) in "
            "all): the table holds a run twice (appended twice, or rerun with the same run_id, "
            "e.g. on another device); drop the duplicates first"
        )


def _sort_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Sort a per-run table by task, optimizer, hparams, seed, run_id, split, metric."""
    return sort_table(table, ["task", "optimizer", "hparams", "seed", "run_id", "split", "metric"])
