"""A family meta-training run's curves, from its ``meta_log.csv``: ``family_curves.png``.

Three panels, what a person judges such a run by (:mod:`harness.meta.family.heldout`,
:mod:`harness.meta.family.meters`):

* the held-out meta-loss (``heldout_loss``: the mean log training loss over whole horizons on the
  judge's fixed tasks) against meta-training CPU-hours, shaded +-2 standard errors over the
  judge's tasks, with the problem-steps spent on a top axis;
* the judge's final training and validation log losses against CPU-hours;
* the meters against outer steps: the split-half cosine and its control of random directions
  (medians over a window of outer steps), with the 0.1 line below which an estimate is noise.

:func:`build_family_report` is called after every chunk of ``lopt meta-train family=...``;
:func:`heldout_curves` and :func:`plot_heldout` serve the estimator comparison's figure too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.meta.family.meters import NOISE_COSINE

CURVES_FILE = "family_curves.png"
#: the judge's metrics, by outer step
HELDOUT_COLUMNS = ("heldout_loss", "heldout_loss_se", "heldout_final_train", "heldout_final_valid")
#: outer steps in the window of the meters' running median
METER_WINDOW = 25


def heldout_curves(log: pd.DataFrame) -> pd.DataFrame:
    """One row per judgement of the run: ``outer_step``, ``cpu_hours`` and ``problem_steps``
    spent by then, and the judge's metrics (``heldout_loss_se`` 0 where a log predates it)."""
    wide = log.pivot_table(index="outer_step", columns="metric", values="value", aggfunc="last")
    judged = wide[wide["heldout_loss"].notna()] if "heldout_loss" in wide else wide.iloc[:0]
    spent = wide.reindex(columns=["cpu_seconds", "problem_steps"]).ffill().fillna(0.0)
    out = pd.DataFrame(index=judged.index)
    out["cpu_hours"] = spent.loc[judged.index, "cpu_seconds"] / 3600.0
    out["problem_steps"] = spent.loc[judged.index, "problem_steps"]
    for name in HELDOUT_COLUMNS:
        out[name] = judged[name] if name in judged else float("nan")
    out["heldout_loss_se"] = out["heldout_loss_se"].fillna(0.0)
    return out.reset_index()


def plot_heldout(ax, curves: pd.DataFrame, label: str | None = None) -> None:
    """``heldout_loss`` against CPU-hours on ``ax``, shaded +-2 standard errors."""
    x, loss, se = curves["cpu_hours"], curves["heldout_loss"], curves["heldout_loss_se"]
    ax.plot(x, loss, marker="o", ms=2, label=label)
    ax.fill_between(x, loss - 2 * se, loss + 2 * se, alpha=0.2)
    ax.set_xlabel("meta-training CPU-hours")
    ax.set_ylabel("held-out meta-loss (mean log loss; lower is better)")


def build_family_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write ``family_curves.png`` of the run in ``folder`` into ``out`` (default: the run's
    folder); returns its path. ``UsageError`` (one line) if the folder holds no log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.meta.report import read_meta_log
    from harness.util import write_atomically

    log = read_meta_log(folder)
    curves = heldout_curves(log)
    meters = log[log["metric"].isin(["split_cosine", "control_split_cosine"])].pivot_table(
        index="outer_step", columns="metric", values="value", aggfunc="last"
    )
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    logged_se = bool((curves["heldout_loss_se"] > 0).any())
    plot_heldout(
        left, curves, "held-out meta-loss" + (" +-2 SE" if logged_se else " (no SE logged)")
    )
    left.legend(fontsize=8)
    if len(curves) > 1 and curves["cpu_hours"].max() > 0:
        top = left.twiny()
        top.set_xlim(left.get_xlim())
        ticks = left.get_xticks()
        ticks = ticks[(ticks >= 0) & (ticks <= curves["cpu_hours"].max())]
        steps = pd.Series(curves["problem_steps"].to_numpy(), index=curves["cpu_hours"])
        top.set_xticks(ticks)
        top.set_xticklabels(
            [f"{steps.iloc[steps.index.get_indexer([t], method='nearest')[0]]:.2g}" for t in ticks]
        )
        top.set_xlabel("problem-steps", fontsize=8)
    for name, label in (("heldout_final_train", "final train"), ("heldout_final_valid", "valid")):
        middle.plot(curves["cpu_hours"], curves[name], marker="o", ms=2, label=label)
    middle.set_xlabel("meta-training CPU-hours")
    middle.set_ylabel("held-out log loss at the end of each run")
    middle.legend(fontsize=8)
    for name, label in (("split_cosine", "split-half cosine"), ("control_split_cosine", "control")):
        if name in meters:
            running = meters[name].rolling(METER_WINDOW, min_periods=1).median()
            right.plot(running.index, running.to_numpy(), label=f"{label} (running median)")
    right.axhline(NOISE_COSINE, color="grey", ls="--", lw=0.8, label=f"noise below {NOISE_COSINE}")
    right.set_xlabel("outer step")
    right.set_ylabel("estimate's split-half cosine")
    right.legend(fontsize=8)
    first = log.iloc[0]
    fig.suptitle(
        f"{first['family']}: {first['learner']}, {first['estimator']} (seed {first['seed']}), "
        f"{int(log['outer_step'].max())} outer steps",
        fontsize=10,
    )
    fig.tight_layout()
    target = Path(out) if out is not None else Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    path = target / CURVES_FILE
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
