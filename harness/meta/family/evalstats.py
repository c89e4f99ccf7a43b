"""The statistics of ``lopt evaluate-family``: speedups against per-task-tuned Adam, test-loss
comparisons and their bootstrap intervals (pure numpy; nothing is run or timed here).

Inputs, for K tasks, O optimizer rows, S evaluation seeds and C checkpoints (the same for every
task):

* ``curves`` ``[K, O, S, C]``: the whole-training-split loss at the checkpoints ``steps``
  (``[C]``, increasing; the last one is the end of the run, so ``curves[..., -1]`` is the final
  training loss);
* ``finals`` ``[K, O, S, 3]``: the final train, valid and test losses;
* ``costs`` ``[K, O]``: seconds per step of each optimizer row on each task;
* rows ``0 .. grid - 1`` are Adam at the grid's learning rates.

Per task, on the mean over seeds (of a seed resample): "tuned Adam" for speed is the grid row
with the lowest mean final training loss, and its mean final training loss is the *target*; for
test loss it is the row with the lowest mean final validation loss. A row reaches the target at
the first checkpoint where its mean training curve is at or below it (inf: never; tuned Adam
itself always does, at the latest at the end). Speedup in steps = tuned Adam's steps / the
row's (0 when never reached); in seconds = that times tuned Adam's cost per step / the row's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: headline statistics per candidate row (names of :func:`headline`'s keys)
HEADLINE = (
    "frac_faster_wall",
    "frac_faster_steps",
    "median_speedup_wall",
    "median_speedup_steps",
    "frac_test_lower",
    "median_test_diff",
)


@dataclass(frozen=True)
class TaskTable:
    """Per-task outcomes (each ``[K]`` or ``[K, O]``) of one (re)sample of seeds and tasks."""

    tuned_train: np.ndarray  # [K] grid row tuned on final training loss
    tuned_valid: np.ndarray  # [K] grid row tuned on final validation loss
    target: np.ndarray  # [K] tuned Adam's mean final training loss
    steps_to_target: np.ndarray  # [K, O] steps (inf: never)
    speedup_steps: np.ndarray  # [K, O]
    speedup_wall: np.ndarray  # [K, O]
    test: np.ndarray  # [K, O] mean final test loss
    test_diff: np.ndarray  # [K, O] test minus tuned-on-valid Adam's test


def first_reach(curves: np.ndarray, targets: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The step of the first checkpoint where ``curves`` (``[..., C]``) is at or below
    ``targets`` (broadcast against ``curves[..., 0]``); ``inf`` where it never is."""
    reach = curves <= np.asarray(targets)[..., None]
    first = np.asarray(steps, dtype=float)[reach.argmax(-1)]
    return np.where(reach.any(-1), first, np.inf)


def task_table(
    curves: np.ndarray,
    finals: np.ndarray,
    costs: np.ndarray,
    steps: np.ndarray,
    grid: int,
    seed_idx: Sequence[int] | np.ndarray | None = None,
    task_idx: Sequence[int] | np.ndarray | None = None,
) -> TaskTable:
    """Per-task outcomes on the seeds ``seed_idx`` and tasks ``task_idx`` (indices, repeats
    allowed: a bootstrap resample; None: all)."""
    if task_idx is not None:
        curves, finals, costs = curves[task_idx], finals[task_idx], costs[task_idx]
    if seed_idx is not None:
        curves, finals = curves[:, :, seed_idx], finals[:, :, seed_idx]
    mean_curve = curves.mean(axis=2)  # [K, O, C]
    mean_final = finals.mean(axis=2)  # [K, O, 3]
    k = np.arange(mean_curve.shape[0])
    tuned_train = mean_final[:, :grid, 0].argmin(axis=1)
    tuned_valid = mean_final[:, :grid, 1].argmin(axis=1)
    target = mean_curve[k, tuned_train, -1]
    reached = first_reach(mean_curve, target[:, None], steps)
    adam_steps = reached[k, tuned_train]
    with np.errstate(divide="ignore"):
        speedup_steps = adam_steps[:, None] / reached
    speedup_wall = speedup_steps * costs[k, tuned_train][:, None] / costs
    test = mean_final[:, :, 2]
    return TaskTable(
        tuned_train=tuned_train,
        tuned_valid=tuned_valid,
        target=target,
        steps_to_target=reached,
        speedup_steps=speedup_steps,
        speedup_wall=speedup_wall,
        test=test,
        test_diff=test - test[k, tuned_valid][:, None],
    )


def headline(table: TaskTable, row: int) -> dict[str, float]:
    """Row ``row``'s statistics over the tasks: the fractions of tasks where it reaches tuned
    Adam's final training loss in less wall-clock / fewer steps, the median speedups, the
    fraction of tasks where its mean test loss is below tuned-on-valid Adam's and the median
    test-loss difference."""
    return {
        "frac_faster_wall": float(np.mean(table.speedup_wall[:, row] > 1)),
        "frac_faster_steps": float(np.mean(table.speedup_steps[:, row] > 1)),
        "median_speedup_wall": float(np.median(table.speedup_wall[:, row])),
        "median_speedup_steps": float(np.median(table.speedup_steps[:, row])),
        "frac_test_lower": float(np.mean(table.test_diff[:, row] < 0)),
        "median_test_diff": float(np.median(table.test_diff[:, row])),
    }


def bootstrap(
    curves: np.ndarray,
    finals: np.ndarray,
    costs: np.ndarray,
    steps: np.ndarray,
    grid: int,
    rows: Sequence[int],
    resamples: int,
    *,
    tasks_too: bool = False,
    seed: int = 0,
    level: float = 0.95,
) -> dict[int, dict[str, tuple[float, float]]]:
    """Percentile intervals of :func:`headline` for each of ``rows``: each resample draws S
    evaluation seeds with replacement, the same ones for every task and optimizer (paired;
    tuned Adam is re-chosen on them), and with ``tasks_too`` the K tasks as well."""
    rng = np.random.default_rng(seed)
    num_tasks, _, num_seeds, _ = curves.shape
    draws: dict[int, dict[str, list[float]]] = {r: {h: [] for h in HEADLINE} for r in rows}
    for _ in range(resamples):
        seed_idx = rng.integers(0, num_seeds, num_seeds)
        task_idx = rng.integers(0, num_tasks, num_tasks) if tasks_too else None
        table = task_table(curves, finals, costs, steps, grid, seed_idx, task_idx)
        for r in rows:
            for name, value in headline(table, r).items():
                draws[r][name].append(value)
    tail = (1 - level) / 2 * 100
    return {
        r: {
            name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            for name, v in values.items()
        }
        for r, values in draws.items()
    }


def seed_interval(
    diffs: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stat: Callable[..., Any] = np.mean,
) -> tuple[float, float, float]:
    """``stat`` (the mean, or e.g. ``np.median``) of per-seed paired values ``[S]`` and its
    percentile bootstrap interval (seeds drawn with replacement)."""
    diffs = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    draws = stat(diffs[rng.integers(0, diffs.size, (resamples, diffs.size))], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(stat(diffs)), float(low), float(high)
