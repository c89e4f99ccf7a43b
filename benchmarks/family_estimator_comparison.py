"""PES, truncated ES and the paper's merged estimator on one task family at equal CPU: held-out
meta-loss against CPU-hours.

Runs ``lopt meta-train family=...`` once per estimator with the same settings (same seed, pairs,
truncations, horizons, learner, held-out set), in chunks, taking turns: the estimator with the
fewest meta-training CPU seconds so far runs next, for at most ``--chunk-seconds`` (wall) and
aiming at ``--cpu-seconds`` (the chunk's wall limit is the CPU left times the run's wall/CPU
ratio so far), until each has spent its budget (within 2 %). The CPU seconds are
the trainer's (``cpu_seconds``: the outer steps' process time, all ranks; the held-out
evaluations are not counted). Interrupted, it is rerun with the same arguments and continues
where the runs stopped (each run resumes from its folder ``OUT/<estimator>``); a larger
``--cpu-seconds`` extends a finished comparison.

Every run is judged by the same held-out set (its ``heldout_*`` rows: the tasks, inits and
horizons depend on the seed and the family, not on the estimator). Writes, atomically:

* ``OUT/comparison.csv``: tidy, one row per (estimator, held-out evaluation, metric):
  ``estimator, outer_step, cpu_seconds, cpu_hours, metric, value`` for ``heldout_loss``,
  ``heldout_loss_se`` (its standard error over the set's tasks), ``heldout_final_train``,
  ``heldout_final_valid``;
* ``OUT/summary.csv``: per estimator its outer steps, CPU-hours, last held-out values and the
  medians over outer steps of the meters (``split_cosine``, ``snr`` and their controls) and,
  for merged, of ``es_weight``;
* ``OUT/comparison.png``: ``heldout_loss`` against CPU-hours, +-2 standard errors;
* ``OUT/final.csv`` (``--final-tasks K``, default 128; 0 skips it): the shared starting theta
  and each estimator's last theta run on the same K members of the family's held-out sample
  (the judge's set, enlarged), one row per (theta, task): ``theta, task, heldout_loss,
  heldout_final_train, heldout_final_valid``;
* ``OUT/final_paired.csv``: from ``final.csv``, per pair of thetas (each estimator against the
  start, and each pair of estimators) and metric, the mean paired difference over the K tasks
  with a 95 % percentile bootstrap interval (tasks resampled).

The summary judges each estimator at the common budget (the least CPU any of them spent), not
at its last step only: the judge swings between evaluations as a noisy estimate walks theta
around, so ``late_heldout_loss`` is the mean of its ``heldout_loss`` over the evaluations in the
second half of the common budget, with ``late_heldout_loss_se`` from the means of 5 consecutive
blocks of them (their spread over sqrt(5); the evaluations are correlated, the blocks less so),
and ``lowest_heldout_loss`` (with ``lowest_at_cpu_hours``) is the best judgement within it,
optimistic by selection.

Prints one line per chunk and the summary table. Exit 0 (no target: the numbers are the
result); anything else is a crash.

Usage::

    python benchmarks/family_estimator_comparison.py --out outputs/meta/estimator_comparison \\
        --cpu-seconds 3600 --chunk-seconds 600 [--estimators pes,tes,merged] \\
        [KEY=VALUE ...]     # any `lopt meta-train family=...` setting, e.g. pairs=32 lr=0.003
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from harness.errors import UsageError
from harness.meta.checkpoint import load_trainer_state
from harness.meta.family.command import meta_train_family
from harness.meta.family.meters import METER_NAMES
from harness.meta.family.report import plot_heldout
from harness.meta.family.trainer import LOG_FILE, STATE_FILE
from harness.util import write_atomically

HELDOUT = ("heldout_loss", "heldout_loss_se", "heldout_final_train", "heldout_final_valid")
#: a run within this fraction of its budget has spent it
SLACK = 0.02
#: blocks of the late judgements for their batch-means standard error
BLOCKS = 5


def settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words as a nested mapping (values parsed as YAML; ``a.b=1`` nests)."""
    out: dict[str, Any] = {}
    for word in pairs:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise UsageError(f"settings are KEY=VALUE (e.g. pairs=32); got {word!r}")
        node = out
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(text)
    return out


def spent(folder: Path) -> tuple[float, int, float]:
    """``(cpu_seconds, outer_step, wall seconds per CPU second)`` of the run in ``folder``
    (0, 0, 1 before its first save)."""
    state = folder / STATE_FILE
    if not state.is_file():
        return 0.0, 0, 1.0
    data = load_trainer_state(state)
    cpu, wall = float(data["cpu_seconds"]), float(data["seconds"])
    return cpu, int(data["outer_step"]), max(1.0, wall / cpu) if cpu > 0 else 1.0


def run_chunks(args: argparse.Namespace, base: dict[str, Any], names: list[str]) -> None:
    """Chunks, fewest CPU seconds first, until every estimator has spent ``--cpu-seconds``."""
    while True:
        status = {name: spent(args.out / name) for name in names}
        todo = [n for n in names if status[n][0] < args.cpu_seconds * (1 - SLACK)]
        if not todo:
            return
        name = min(todo, key=lambda n: (status[n][0], names.index(n)))
        before, _, ratio = status[name]
        # max_seconds is wall time: on a shared machine a CPU second takes `ratio` of them
        chunk = min(args.chunk_seconds, (args.cpu_seconds - before) * ratio)
        started = time.perf_counter()
        meta_train_family(
            {**base, "estimator": name, "out": str(args.out / name), "max_seconds": chunk}
        )
        after, step, _ = spent(args.out / name)
        print(
            f"[comparison] {name}: {after:.0f} / {args.cpu_seconds:.0f} CPU-s, outer step "
            f"{step} ({time.perf_counter() - started:.0f} s wall for this chunk)",
            flush=True,
        )
        if after <= before:
            raise RuntimeError(f"{name}: a chunk made no progress ({before} CPU-s)")


def tidy(folder: Path, name: str) -> pd.DataFrame:
    """The held-out rows of one run, with the CPU seconds spent by their outer step."""
    log = pd.read_csv(folder / LOG_FILE)
    cpu = log[log["metric"] == "cpu_seconds"].set_index("outer_step")["value"]
    rows = log[log["metric"].isin(HELDOUT)][["outer_step", "metric", "value"]].copy()
    rows["cpu_seconds"] = [float(cpu.get(s, 0.0)) for s in rows["outer_step"]]
    rows["cpu_hours"] = rows["cpu_seconds"] / 3600.0
    rows.insert(0, "estimator", name)
    return rows[["estimator", "outer_step", "cpu_seconds", "cpu_hours", "metric", "value"]]


def late_level(frame: pd.DataFrame, name: str, budget: float) -> dict[str, float]:
    """``name``'s judgements within ``budget`` CPU seconds: the mean ``heldout_loss`` over the
    second half of it with a 5-block batch-means standard error, and the lowest (module
    docstring)."""
    rows = frame[(frame["estimator"] == name) & (frame["metric"] == "heldout_loss")]
    rows = rows[rows["cpu_seconds"] <= budget * (1 + SLACK)].sort_values("cpu_seconds")
    late = rows.loc[rows["cpu_seconds"] >= budget / 2, "value"].to_numpy()
    out = {"late_heldout_loss": math.nan, "late_heldout_loss_se": math.nan, "late_judgements": 0}
    if len(late):
        out["late_heldout_loss"] = float(late.mean())
        out["late_judgements"] = len(late)
    if len(late) >= BLOCKS:
        blocks = [float(b.mean()) for b in np.array_split(late, BLOCKS)]
        out["late_heldout_loss_se"] = statistics.stdev(blocks) / math.sqrt(BLOCKS)
    if len(rows):
        best = rows.loc[rows["value"].idxmin()]
        out["lowest_heldout_loss"] = float(best["value"])
        out["lowest_at_cpu_hours"] = float(best["cpu_hours"])
    return out


def summary(
    folder: Path, name: str, frame: pd.DataFrame, done: tuple[float, int, float], budget: float
) -> dict[str, Any]:
    """One estimator's line: steps and CPU (``done``, its :func:`spent`), last held-out values,
    the level over the second half of the common ``budget`` (CPU seconds), the meters' medians."""
    log = pd.read_csv(folder / LOG_FILE)
    cpu, step, _ = done
    out: dict[str, Any] = {"estimator": name, "outer_steps": step, "cpu_hours": cpu / 3600}
    mine = frame[frame["estimator"] == name]
    last = mine[mine["outer_step"] == mine["outer_step"].max()]
    for metric in HELDOUT:
        values = last.loc[last["metric"] == metric, "value"]
        out[metric] = float(values.iloc[-1]) if len(values) else math.nan
    out.update(late_level(frame, name, budget))
    steps = log.loc[log["metric"] == "problem_steps", "value"]
    out["problem_steps"] = float(steps.iloc[-1]) if len(steps) else math.nan
    for metric in (*METER_NAMES, "es_weight"):
        values = [v for v in log.loc[log["metric"] == metric, "value"] if math.isfinite(v)]
        out[f"median_{metric}"] = statistics.median(values) if values else math.nan
    return out


def final_evaluation(
    base: dict[str, Any], out: Path, names: list[str], count: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``final.csv`` and ``final_paired.csv`` (module docstring): the start theta and each
    estimator's saved theta on ``count`` held-out members, and their paired differences."""
    from harness.meta.family.evalstats import seed_interval
    from harness.meta.family.heldout import HELDOUT_METRICS, HeldOutSet
    from harness.meta.family.trainer import FamilyTrainer
    from harness.settings.family import coerce_family_config

    cfg = coerce_family_config({**base, "estimator": names[0], "out": str(out / names[0])})
    trainer = FamilyTrainer(cfg)  # the learner, the schedule and the start theta; writes nothing
    judged = HeldOutSet(trainer.schedule, count)
    thetas = {"start": trainer.theta}
    for name in names:
        thetas[name] = load_trainer_state(out / name / STATE_FILE)["theta"].float()
    values: dict[str, np.ndarray] = {}
    rows = []
    for label, theta in thetas.items():
        started = time.perf_counter()
        values[label] = judged.per_task(trainer.learner, theta).numpy()
        print(
            f"[final] {label}: {count} tasks in {time.perf_counter() - started:.0f} s", flush=True
        )
        for k, line in enumerate(values[label]):
            rows.append(
                {"theta": label, "task": k, **dict(zip(HELDOUT_METRICS, line, strict=True))}
            )
    pairs = [(name, "start") for name in names]
    pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    paired = []
    for a, b in pairs:
        for m, metric in enumerate(HELDOUT_METRICS):
            diffs = values[a][:, m] - values[b][:, m]
            mean, low, high = seed_interval(diffs, resamples=10_000)
            paired.append(
                {
                    "theta": a,
                    "minus": b,
                    "metric": metric,
                    "mean_difference": mean,
                    "low": low,
                    "high": high,
                    "frac_lower": float(np.mean(diffs < 0)),
                    "tasks": count,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(paired)


def figure(frame: pd.DataFrame, path: Path, title: str) -> None:
    """``heldout_loss`` against CPU-hours per estimator, shaded +-2 standard errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, part in frame.groupby("estimator", sort=False):
        wide = part.pivot_table(index="cpu_hours", columns="metric", values="value")
        if "heldout_loss_se" not in wide:
            wide["heldout_loss_se"] = 0.0
        curves = wide.reset_index().fillna({"heldout_loss_se": 0.0})
        plot_heldout(ax, curves, str(name))
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/meta/estimator_comparison"))
    parser.add_argument("--cpu-seconds", type=float, default=3600.0)
    parser.add_argument("--chunk-seconds", type=float, default=600.0)
    parser.add_argument("--estimators", default="pes,tes,merged")
    parser.add_argument("--family", default="mlp_mix")
    parser.add_argument("--learner", default="nominal_mlp")
    parser.add_argument(
        "--final-tasks", type=int, default=128, help="held-out tasks for final.csv (0: none)"
    )
    parser.add_argument("settings", nargs="*", help="KEY=VALUE settings of every run")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    if not names or args.cpu_seconds <= 0 or args.chunk_seconds <= 0 or args.final_tasks < 0:
        raise UsageError(
            "need estimators, --cpu-seconds > 0, --chunk-seconds > 0 and --final-tasks >= 0"
        )
    torch.set_num_threads(1)
    extra = settings(args.settings)
    for fixed in ("estimator", "out", "max_seconds", "outer_steps"):
        if fixed in extra:
            raise UsageError(f"{fixed} is set by the comparison; leave it out")
    base = {
        "family": args.family,
        "learner": args.learner,
        "parallel": "single",
        "outer_steps": 10**9,
        **extra,
    }
    run_chunks(args, base, names)
    frame = pd.concat([tidy(args.out / n, n) for n in names], ignore_index=True)
    write_atomically(args.out / "comparison.csv", lambda tmp: frame.to_csv(tmp, index=False))
    done = {n: spent(args.out / n) for n in names}
    budget = min(cpu for cpu, _, _ in done.values())
    table = pd.DataFrame([summary(args.out / n, n, frame, done[n], budget) for n in names])
    write_atomically(args.out / "summary.csv", lambda tmp: table.to_csv(tmp, index=False))
    title = f"{args.family}, {args.learner}, {args.cpu_seconds:.0f} CPU-s per estimator"
    figure(frame, args.out / "comparison.png", title)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out / 'comparison.csv'}, summary.csv and comparison.png")
    if args.final_tasks:
        final, paired = final_evaluation(base, args.out, names, args.final_tasks)
        write_atomically(args.out / "final.csv", lambda tmp: final.to_csv(tmp, index=False))
        write_atomically(args.out / "final_paired.csv", lambda tmp: paired.to_csv(tmp, index=False))
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(paired.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {args.out / 'final.csv'} and final_paired.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
