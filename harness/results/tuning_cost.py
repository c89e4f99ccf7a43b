"""The cost of tuning: the expected best result after k tuning trials, from stored studies.

A learned optimizer needs no tuning trials (it sits at k = 0); a tuned baseline's result
depends on how many trials it was given. For each tuning study a comparison's runs come from
(their ``study`` tag), with its ``n`` counted trials' objectives ``v_1..v_n`` (in trial order;
a diverged trial scores the divergence penalty the study stored, a failed or pruned one
``inf``):

* ``expected``: the expected best (lowest) objective of ``k`` trials drawn without replacement
  from the study's ``n`` (:func:`expected_best_of_k`, the exact order-statistic formula: with
  the values sorted ``v_(1) <= ... <= v_(n)``, ``P(best = v_(i)) = C(n - i, k - 1) / C(n, k)``);
* ``low`` / ``high``: the 10% and 90% quantiles of that best (:func:`best_of_k_quantile`,
  exact: ``P(best <= v_(i)) = 1 - C(n - i, k) / C(n, k)``), an 80% interval;
* ``prefix``: the best of the study's *first* ``k`` trials, what the sequential sampler
  actually had found after ``k`` trials (one realisation; TPE's later trials concentrate
  where the earlier ones did well, so random subsets, which mix early and late trials, may be
  better or worse than a real ``k``-trial study);

for ``k = 1, 2, 4, ...`` up to ``n`` (and ``n``). A learned optimizer's value is the mean
over its evaluation seeds of its final loss on the comparison's split (the objective a study
minimises is the final loss on the same split, averaged over the tuning seeds).
:func:`trials_to_match` answers "how many tuning trials does this baseline need, in
expectation, before it matches this learned optimizer?".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.results.derived import final_and_best
from harness.util import markdown_table, write_atomically

QUANTILES = (0.1, 0.9)
LEARNED_COLOURS = ["0.1", "tab:olive", "tab:cyan", "tab:gray", "tab:pink", "0.55"]
CURVE_COLUMNS = (
    "comparison",
    "task",
    "optimizer",
    "study",
    "n",
    "k",
    "expected",
    "low",
    "high",
    "prefix",
)


def _sorted(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("best of k needs at least one trial")
    return np.sort(np.where(np.isnan(data), math.inf, data))


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of trials ({n}), got {k}")


def expected_best_of_k(values: Sequence[float], k: int) -> float:
    """The expected minimum of ``k`` of ``values`` drawn without replacement (NaN counts as
    ``inf``; the result is ``inf`` when an all-``inf`` draw is possible)."""
    data = _sorted(values)
    n = len(data)
    _check_k(n, k)
    total = math.comb(n, k)
    expected = 0.0
    for i, value in enumerate(data, start=1):
        weight = math.comb(n - i, k - 1) / total
        if weight > 0:
            if math.isinf(value):
                return math.inf
            expected += weight * value
    return expected


def best_of_k_quantile(values: Sequence[float], k: int, q: float) -> float:
    """The ``q`` quantile of the minimum of ``k`` of ``values`` drawn without replacement:
    the smallest ``v_(i)`` with ``P(min <= v_(i)) >= q``."""
    data = _sorted(values)
    n = len(data)
    _check_k(n, k)
    total = math.comb(n, k)
    for i, value in enumerate(data, start=1):
        if 1.0 - math.comb(n - i, k) / total >= q - 1e-12:
            return float(value)
    return float(data[-1])


def ks_for(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n``, and ``n`` itself."""
    ks = [2**j for j in range(int(math.log2(n)) + 1)] if n >= 1 else []
    return ks + ([n] if ks and ks[-1] != n else [])


def best_of_k_curve(values: Sequence[float]) -> pd.DataFrame:
    """``k, expected, low, high, prefix`` for each ``k`` of :func:`ks_for` (see module doc);
    ``values`` in trial order."""
    data = np.where(np.isnan(np.asarray(values, dtype=float)), math.inf, values)
    rows = [
        {
            "k": k,
            "expected": expected_best_of_k(data, k),
            "low": best_of_k_quantile(data, k, QUANTILES[0]),
            "high": best_of_k_quantile(data, k, QUANTILES[1]),
            "prefix": float(np.min(data[:k])),
        }
        for k in ks_for(len(data))
    ]
    return pd.DataFrame(rows, columns=["k", "expected", "low", "high", "prefix"])


def trials_to_match(curve: pd.DataFrame, value: float) -> int | None:
    """The smallest ``k`` of ``curve`` whose expected best is at most ``value`` (None if no
    ``k`` up to the study's size gets there)."""
    hit = curve[curve["expected"] <= value]
    return int(hit["k"].min()) if not hit.empty else None


# -- from stored studies and results ----------------------------------------------------------
def study_values(storage: str, study: str, trials: int) -> list[float]:
    """The objectives of a stored study's first ``trials`` counted trials, in trial order
    (a diverged trial's stored penalty; ``inf`` for a pruned or failed one)."""
    import optuna
    from optuna.trial import TrialState

    from harness.tuning.study import counted_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=storage)
    return [
        float(t.value) if t.state == TrialState.COMPLETE and t.value is not None else math.inf
        for t in counted_trials(loaded, trials)
    ]


def first_study_values(storages: Sequence[str], study: str, trials: int) -> list[float] | None:
    """:func:`study_values` from the first of ``storages`` that has ``study``; None if none has."""
    for storage in storages:
        try:
            return study_values(storage, study, trials)
        except KeyError:  # optuna: no such study in this storage
            continue
    return None


def _tags(text: object) -> dict:
    try:
        data = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def tuning_cost(
    comparisons: dict[str, pd.DataFrame],
    storage: str | Sequence[str],
    is_baseline: Callable[[str], bool],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each comparison (name -> its rows, the name being the split): the best-of-k curve
    of every tuned baseline's study (:data:`CURVE_COLUMNS`), and one row per task, learned
    optimizer and tuned baseline with the learned optimizer's mean final loss
    (``learned_loss``), the baseline's fully tuned expected best (``tuned_best``, at ``k = n``)
    and ``trials_to_match`` (NaN when ``n`` trials are not enough). Studies missing from
    ``storage`` are left out; with several storages, a study is read from the first that has
    it."""
    storages = (storage,) if isinstance(storage, str) else tuple(storage)
    curves, matches = [], []
    for comparison, frame in comparisons.items():
        finals = final_and_best(frame)
        finals = finals[(finals["split"] == comparison) & (finals["metric"] == "loss")]
        learned = {
            (task, opt): float(rows["final_value"].mean())
            for (task, opt), rows in finals.groupby(["task", "optimizer"])
            if not is_baseline(str(opt))
        }
        studies = {}
        for (task, opt, tags), _ in frame.groupby(["task", "optimizer", "tags"]):
            data = _tags(tags)
            if is_baseline(str(opt)) and "study" in data:
                studies[(str(task), str(opt))] = (str(data["study"]), int(data["trials"]))
        for (task, opt), (study, trials) in sorted(studies.items()):
            values = first_study_values(storages, study, trials)
            if values is None:
                continue
            curve = best_of_k_curve(values)
            curves.append(
                curve.assign(
                    comparison=comparison, task=task, optimizer=opt, study=study, n=len(values)
                )
            )
            for (l_task, l_opt), loss in sorted(learned.items()):
                if l_task == task:
                    needed = trials_to_match(curve, loss)
                    matches.append(
                        {
                            "comparison": comparison,
                            "task": task,
                            "learned": l_opt,
                            "learned_loss": loss,
                            "baseline": opt,
                            "trials": len(values),
                            "tuned_best": float(curve["expected"].iloc[-1]),
                            "trials_to_match": math.nan if needed is None else needed,
                        }
                    )
    curve_table = (
        pd.concat(curves, ignore_index=True)[list(CURVE_COLUMNS)]
        if curves
        else pd.DataFrame(columns=list(CURVE_COLUMNS))
    )
    return curve_table, pd.DataFrame(matches)


def plot_tuning_cost(curves: pd.DataFrame, matches: pd.DataFrame, path: str | Path) -> Path:
    """One panel per workload (comparison, task): each baseline's expected best objective
    against ``k`` (log 2 axis) with its 80% band, and each learned optimizer (``k = 0``) as a
    dashed horizontal line. The y axis stops at 10x the largest value from ``k = 4`` on (or
    of a learned optimizer), so divergence penalties at small ``k`` may run off the top."""
    workloads = sorted({(c, t) for c, t in zip(curves["comparison"], curves["task"], strict=True)})
    columns = min(2, max(1, len(workloads)))
    rows = math.ceil(len(workloads) / columns) if workloads else 1
    figure = Figure(figsize=(6.5 * columns, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (comparison, task) in enumerate(workloads):
        axes = figure.add_subplot(rows, columns, index + 1)
        sub = curves[(curves["comparison"] == comparison) & (curves["task"] == task)]
        for optimizer, rows_ in sub.groupby("optimizer", sort=True):
            finite = rows_[np.isfinite(rows_["expected"])]
            (line,) = axes.plot(finite["k"], finite["expected"], marker="o", ms=3, label=optimizer)
            band = rows_[np.isfinite(rows_["high"])]
            axes.fill_between(
                band["k"], band["low"], band["high"], alpha=0.15, color=line.get_color()
            )
        tops = [*sub.loc[sub["k"] >= 4, "high"], *sub.groupby("optimizer")["high"].last()]
        if not matches.empty:
            mine = matches[(matches["comparison"] == comparison) & (matches["task"] == task)]
            shades = iter(LEARNED_COLOURS * 3)
            for learned, rows_ in mine.groupby("learned", sort=True):
                value = float(rows_["learned_loss"].iloc[0])
                tops.append(value)
                axes.axhline(value, ls="--", lw=1.2, color=next(shades), label=f"{learned} (k=0)")
        axes.set_yscale("log")
        finite = [t for t in tops if np.isfinite(t) and t > 0]
        lows = [v for v in (*sub["low"], *tops) if np.isfinite(v) and v > 0]
        if finite and lows:  # divergence penalties at small k would squash the rest: cut there
            axes.set_ylim(min(lows) / 2, 10 * max(finite))
        axes.set_xscale("log", base=2)
        axes.set_xlabel("tuning trials k")
        axes.set_ylabel(f"expected best final {comparison} loss")
        axes.set_title(f"{task}, {comparison} comparison", fontsize="medium")
        axes.legend(fontsize="xx-small", ncol=2)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def tuning_cost_markdown(curves: pd.DataFrame, matches: pd.DataFrame) -> list[str]:
    """The *Tuning cost* section of a comparison report."""
    lines = [
        "## Tuning cost",
        "",
        "How many tuning trials each baseline needs, in expectation, to match each learned "
        "optimizer (which needs none): the smallest k = 1, 2, 4, ... whose expected best "
        "study objective (the final loss, mean over the tuning seeds; k trials drawn from the "
        "stored study without replacement) is at most the learned optimizer's mean final "
        "loss over its evaluation seeds; '> n' when the whole study is not enough. Figure "
        "and 80% intervals: [tuning_cost.png](tuning_cost.png), "
        "[tuning_cost.csv](tuning_cost.csv).",
        "",
    ]
    if matches.empty:
        return [*lines, "No tuning study of these runs was found in the storage.", ""]
    for (comparison, task), rows in matches.groupby(["comparison", "task"], sort=True):
        baselines = sorted(rows["baseline"].unique())
        header = ["learned optimizer", f"final {comparison} loss", *baselines]
        body = []
        for learned, mine in rows.groupby("learned", sort=True):
            cells = []
            for baseline in baselines:
                row = mine[mine["baseline"] == baseline].iloc[0]
                needed = row["trials_to_match"]
                cells.append(f"> {row['trials']}" if math.isnan(needed) else f"{needed:.0f}")
            body.append([learned, f"{mine['learned_loss'].iloc[0]:.4g}", *cells])
        tuned = rows.drop_duplicates("baseline").set_index("baseline")
        body.append(
            [
                "(baseline fully tuned: trials, expected best)",
                "",
                *(f"{tuned.loc[b, 'trials']}: {tuned.loc[b, 'tuned_best']:.4g}" for b in baselines),
            ]
        )
        lines += [f"{task}, {comparison} comparison:", ""]
        lines += [markdown_table(header, body, ["left"] + ["right"] * (len(header) - 1)), ""]
    return lines
