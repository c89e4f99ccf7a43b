"""Performance profiles over workloads (AlgoPerf's aggregate; Dolan & Moré 2002).

A *workload* is a task in one comparison (``train`` or ``valid``): its target is the task's
declared :class:`tasks.base.Target` on that split (a loss value and a step budget), or, where
the task declares none, one derived from the runs by :data:`tasks.base.TARGET_RULE`
(:func:`derive_target`; the table says which).

* Time to target (:func:`workload_times`): per optimizer and workload, the median over its seeds
  of the timed training seconds to the first whole-split evaluation at or below the target
  within the target's step budget; a seed that never reaches it counts as infinite, so the
  median is finite exactly when more than half the seeds reach it. An optimizer that has no run
  on a workload is infinite there too.
* Ratio: each optimizer's time over the fastest optimizer's on that workload (``inf`` when it
  never reaches the target; every ratio is ``inf`` on a workload nobody reaches).
* Profile (:func:`profile_curve`): ``rho(tau)``, the fraction of workloads whose ratio is at
  most ``tau``, for ``tau`` from 1 to :data:`TAU_MAX` (4, as AlgoPerf).
* Score (:func:`profile_score`): the integral of ``rho`` over ``[1, TAU_MAX]`` divided by
  ``TAU_MAX - 1``, computed exactly (``rho`` is a step function): the mean over workloads of
  ``(TAU_MAX - max(ratio, 1)) / (TAU_MAX - 1)`` where the ratio is at most ``TAU_MAX``, else 0.
  1 means fastest everywhere, 0 never within a factor ``TAU_MAX`` of the fastest.

A *family sample* (the runs of a task family, ``task=mlp_mix task.member=SEED``, on several
members; :mod:`harness.results.members`) is one workload, however many members it holds, so
that a sample of 16 small tasks weighs in the profile as much as one fixed task (AlgoPerf
weighs each workload equally). Each member is timed as above, to its own target (the rule
applied to the member's runs: the members' loss scales differ, so one value cannot serve them
all), and gets its ratios; each of the ``m`` members then counts ``1/m`` of a workload
(:func:`workload_ratios`): the sample's share of ``rho(tau)`` is the fraction of its members on
which the optimizer is within ``tau`` of the fastest, and its share of the score the mean of
the members' scores (a weighted profile). So an optimizer fastest on 2 of 5 members gets 2/5 of
the workload at ``tau = 1``. (Until 2026-12-06 the sample's ratio was the median over members;
where the fastest optimizer differs by member, that scored 0 for everyone.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.registry import TASKS
from harness.results.derived import final_and_best, time_to_target
from harness.results.members import split_members
from harness.util import markdown_table, write_atomically

TAU_MAX = 4.0
#: the ``tau`` at which the profile table shows ``rho``
TAU_COLUMNS = (1.0, 1.5, 2.0, 3.0, 4.0)
TIME_COLUMNS = (
    "comparison",
    "workload",
    "task",
    "member",
    "optimizer",
    "learned",
    "target",
    "target_source",
    "seconds",
    "reached",
)
PALETTE = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown")] + [
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
    "black",
    "gold",
    "navy",
    "lime",
]


def round_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up (towards +inf) to ``digits`` significant digits."""
    if not math.isfinite(value) or value == 0:
        return value
    exponent = math.floor(math.log10(abs(value)))
    scale = 10.0 ** (digits - 1 - exponent)
    return math.ceil(round(value * scale, 9)) / scale


def derive_target(runs: pd.DataFrame, split: str, is_baseline: Callable[[str], bool]) -> float:
    """:data:`tasks.base.TARGET_RULE` applied to one task's ``runs`` (the rows of
    :func:`~harness.results.derived.final_and_best`): the median over seeds of the final
    ``split`` loss of the baseline with the lowest mean final loss, rounded up to 3
    significant digits. NaN when no baseline has a finite final loss."""
    finals = runs[(runs["split"] == split) & (runs["metric"] == "loss")]
    finals = finals[finals["optimizer"].map(is_baseline)]
    means = finals.groupby("optimizer")["final_value"].mean().dropna()
    if means.empty:
        return math.nan
    best = finals[finals["optimizer"] == means.idxmin()]["final_value"]
    return round_up(float(best.median()))


def workload_targets(
    frame: pd.DataFrame,
    split: str,
    is_baseline: Callable[[str], bool],
    members: Iterable[str] = (),
) -> dict[str, tuple[float, int | None, str]]:
    """Per task in ``frame``: ``(target value, step budget or None, source)``, the task's
    declared target on ``split`` if it has one, else :func:`derive_target` of its runs.
    ``members``: the ``task`` values that are members of a family sample (keys of
    :func:`~harness.results.members.split_members`): always derived from their own runs."""
    runs = final_and_best(frame)
    members = set(members)
    targets = {}
    for task, rows in runs.groupby("task", sort=True):
        if str(task) in members:
            value = derive_target(rows, split, is_baseline)
            targets[str(task)] = (value, None, "derived per member from these runs")
            continue
        try:
            declared = TASKS.get(str(task)).factory.target_for(split)
        except Exception:  # an unregistered task, or one without the Task contract
            declared = None
        if declared is not None:
            targets[str(task)] = (float(declared.value), int(declared.steps), "declared")
        else:
            value = derive_target(rows, split, is_baseline)
            targets[str(task)] = (value, None, "derived from these runs")
    return targets


def workload_times(
    frame: pd.DataFrame, comparison: str, is_baseline: Callable[[str], bool]
) -> pd.DataFrame:
    """One row per task and optimizer of one comparison's ``frame`` (split ``comparison``):
    :data:`TIME_COLUMNS`, ``seconds`` the median time to the target (``inf`` if not reached
    on more than half the seeds), ``reached`` the fraction of seeds that reach it. A family
    sample's rows have ``workload`` the family, ``task`` the member's key (``mlp_mix[SEED]``)
    and ``member`` its seed; other rows ``workload`` = ``task`` and no member."""
    frame, keys = split_members(frame)
    members = [key for key, (_, member) in keys.items() if member is not None]
    targets = workload_targets(frame, comparison, is_baseline, members)
    values = {task: value for task, (value, _, _) in targets.items()}
    hits = time_to_target(frame, values, split=comparison)
    rows = []
    for (task, optimizer), runs in hits.groupby(["task", "optimizer"], sort=True):
        value, steps, source = targets[str(task)]
        workload, member = keys[str(task)]
        reached = runs["reached"].to_numpy(dtype=bool).copy()
        if steps is not None:
            reached = reached & (runs["steps_to_target"].fillna(math.inf).to_numpy() <= steps)
        seconds = np.where(reached, runs["seconds_to_target"].to_numpy(dtype=float), math.inf)
        rows.append(
            {
                "comparison": comparison,
                "workload": workload,
                "task": task,
                "member": member,
                "optimizer": optimizer,
                "learned": not is_baseline(str(optimizer)),
                "target": value,
                "target_source": source,
                "seconds": float(np.median(seconds)) if len(seconds) else math.inf,
                "reached": float(reached.mean()) if len(reached) else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=list(TIME_COLUMNS))


def ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Workloads x optimizers: each time over the workload's fastest (``inf`` where an
    optimizer never reaches the target or has no run; every entry ``inf`` on a workload that
    no optimizer reaches). ``times``: a workloads x optimizers table of seconds."""
    filled = times.astype(float).fillna(math.inf)
    best = filled.min(axis=1)
    out = filled.div(best.where(np.isfinite(best), math.nan), axis=0)
    return out.fillna(math.inf)


def workload_ratios(times: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The ratios a profile counts and their weights. ``times``: rows of :data:`TIME_COLUMNS`
    (one comparison). Returns tasks x optimizers, :func:`ratios` of the times (an optimizer
    with no run on a task is ``inf`` there; a family sample's members are tasks of their own,
    ``mlp_mix[SEED]``), and per task its weight: 1 for a task that is a workload, ``1/m`` for
    each of a family sample's ``m`` members. The weights sum to the number of workloads."""
    wide = times.pivot(index="task", columns="optimizer", values="seconds")
    per_task = ratios(wide)
    workload_of = times.drop_duplicates("task").set_index("task")["workload"]
    workload_of = workload_of.reindex(per_task.index)
    weight = 1.0 / workload_of.map(workload_of.value_counts()).astype(float)
    return per_task, weight.rename("weight")


def _weights(ratio: pd.DataFrame, weight: pd.Series | None) -> pd.Series:
    if weight is None:
        return pd.Series(1.0, index=ratio.index)
    return weight.reindex(ratio.index).astype(float)


def profile_curve(
    ratio: pd.DataFrame, taus: Iterable[float], weight: pd.Series | None = None
) -> pd.DataFrame:
    """``rho(tau)`` per optimizer: the weighted fraction of the rows of ``ratio`` whose ratio
    is at most ``tau`` (``weight`` per row, as :func:`workload_ratios` gives; None: 1 each);
    rows are the ``taus``, columns the optimizers."""
    taus = list(taus)
    w = _weights(ratio, weight)
    total = float(w.sum())
    data = {
        opt: [float(w[ratio[opt] <= tau].sum()) / total for tau in taus] for opt in ratio.columns
    }
    return pd.DataFrame(data, index=pd.Index(taus, name="tau"))


def profile_score(
    ratio: pd.DataFrame, weight: pd.Series | None = None, tau_max: float = TAU_MAX
) -> pd.Series:
    """The integral of ``rho`` over ``[1, tau_max]`` over ``tau_max - 1``, per optimizer
    (exact; see the module docstring): the ``weight``-ed mean over rows (None: 1 each)."""
    clipped = ratio.clip(lower=1.0)
    area = (tau_max - clipped).where(clipped <= tau_max, 0.0) / (tau_max - 1.0)
    w = _weights(ratio, weight)
    return area.mul(w, axis=0).sum(axis=0) / float(w.sum())


def comparison_profiles(
    comparisons: dict[str, pd.DataFrame], is_baseline: Callable[[str], bool]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each comparison (name -> its rows): the time-to-target table (every comparison's
    :func:`workload_times` stacked) and the profile table: one row per comparison and optimizer
    with ``score``, ``workloads`` (how many the comparison has), ``ran_on`` (how many this
    optimizer has runs on), ``within_tau_max`` and ``rho_<tau>`` at :data:`TAU_COLUMNS`."""
    times, table = [], []
    for comparison, rows in comparisons.items():
        sub = workload_times(rows, comparison, is_baseline)
        times.append(sub)
        ratio, weight = workload_ratios(sub)
        curve = profile_curve(ratio, TAU_COLUMNS, weight)
        score = profile_score(ratio, weight)
        ran_on = sub.groupby("optimizer")["workload"].nunique()
        for optimizer in ratio.columns:
            table.append(
                {
                    "comparison": comparison,
                    "optimizer": optimizer,
                    "role": "baseline" if is_baseline(optimizer) else "learned",
                    "score": float(score[optimizer]),
                    "workloads": sub["workload"].nunique(),
                    "ran_on": int(ran_on.get(optimizer, 0)),
                    **{f"rho_{tau:g}": float(curve.loc[tau, optimizer]) for tau in TAU_COLUMNS},
                }
            )
    profile = pd.DataFrame(table)
    if not profile.empty:
        profile = profile.sort_values(["comparison", "score"], ascending=[True, False])
    return pd.concat(times, ignore_index=True) if times else pd.DataFrame(), profile


def plot_profiles(times: pd.DataFrame, path: str | Path) -> Path:
    """One panel per comparison: ``rho(tau)`` of every optimizer for ``tau`` in [1, 4]
    (learned optimizers dashed). ``times``: :func:`comparison_profiles`' first table."""
    names = sorted(times["comparison"].unique())
    figure = Figure(figsize=(6.0 * len(names), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    taus = np.linspace(1.0, TAU_MAX, 301)
    for k, comparison in enumerate(names):
        axes = figure.add_subplot(1, len(names), k + 1)
        sub = times[times["comparison"] == comparison]
        ratio, weight = workload_ratios(sub)
        curve = profile_curve(ratio, taus, weight)
        colours = iter(PALETTE * 2)
        for optimizer in curve.columns:
            learned = sub.loc[sub["optimizer"] == optimizer, "learned"].any()
            axes.step(
                taus,
                curve[optimizer],
                where="post",
                label=optimizer + (" (learned)" if learned else ""),
                ls="--" if learned else "-",
                color=next(colours),
            )
        axes.set_xlim(1.0, TAU_MAX)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("tau (time to target over the fastest's)")
        axes.set_ylabel("fraction of workloads within tau")
        axes.set_title(f"{comparison} comparison: {sub['workload'].nunique()} workloads")
        axes.legend(fontsize="xx-small", loc="center right")
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def profile_markdown(times: pd.DataFrame, profile: pd.DataFrame) -> list[str]:
    """The *Performance profiles* section of a comparison report."""
    lines = [
        "## Performance profiles",
        "",
        "Time to target: the median over seeds of the timed seconds to the workload's target "
        "(a seed that never reaches it counts as infinite); a workload is a task in a "
        f"comparison. Score: the area under the profile from tau = 1 to {TAU_MAX:g}, over "
        f"{TAU_MAX - 1:g} (1: fastest on every workload). Figure: [profiles.png](profiles.png).",
        "",
    ]
    body = []
    for (comparison, workload), rows in times.groupby(["comparison", "workload"], sort=True):
        first = rows.iloc[0]
        members = rows["member"].dropna().nunique()
        if members:
            body.append(
                [
                    comparison,
                    f"{workload} (family sample)",
                    f"one per member ({members} members)",
                    "the rule on each member's runs; each member counts 1/"
                    f"{members} of the workload",
                ]
            )
        else:
            body.append([comparison, workload, f"{first['target']:.4g}", first["target_source"]])
    lines += [markdown_table(["comparison", "workload", "target loss", "target"], body), ""]
    header = ["comparison", "optimizer", "score", "ran on", *(f"rho({t:g})" for t in TAU_COLUMNS)]
    body = [
        [
            r["comparison"],
            r["optimizer"] + (" (learned)" if r["role"] == "learned" else ""),
            f"{r['score']:.3f}",
            f"{r['ran_on']} of {r['workloads']}",
            *(f"{r[f'rho_{t:g}']:.2f}" for t in TAU_COLUMNS),
        ]
        for _, r in profile.iterrows()
    ]
    lines += [markdown_table(header, body, ["left", "left"] + ["right"] * (len(header) - 2)), ""]
    return lines
