"""The tables, summary and figure of ``lopt evaluate-family`` (from its finished parts).

Reads ``out/parts/*.csv.gz`` (:mod:`harness.meta.family.evaluate`), writes
``evaluation.csv.gz`` (all parts, the tidy schema), ``per_task.csv`` (one row per task and
candidate), ``summary.md``
(headline statistics with intervals, the targets as met / MISSED) and ``speedups.png``; the
statistics are :mod:`harness.meta.family.evalstats`'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.meta.family import evalstats
from harness.util import write_atomically

PARTS = "parts"
ROLES = ("learned", "initial")  # the learner's optimizer rows, after Adam's grid rows
TARGET_FRACTION = 0.70
TARGET_SPEEDUP = 1.5
CANDIDATES = ("learned", "initial", "adam default")


def part_path(out: Path, k: int) -> Path:
    """Where task ``k``'s finished rows are kept (gzipped tidy CSV)."""
    return Path(out) / PARTS / f"task_{k:04d}.csv.gz"


def with_status(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each run's ``status``: ``diverged`` when its final training loss was
    non-finite or above the clip (stored as the clip, 10), else ``completed``."""
    from harness.meta.family.problems import LOSS_CLIP
    from harness.results.schema import STATUS_COMPLETED, STATUS_DIVERGED

    train = frame[frame["split"] == "train"]
    last = train.loc[train.groupby("run_id")["step"].idxmax(), ["run_id", "value"]]
    diverged = set(last.loc[last["value"] >= LOSS_CLIP, "run_id"])
    out = frame.copy()
    out["status"] = np.where(out["run_id"].isin(diverged), STATUS_DIVERGED, STATUS_COMPLETED)
    return out


def load_arrays(out: Path, sample: Any, rates: list[float]) -> dict[str, Any]:
    """The finished parts as ``frame`` plus the arrays of :mod:`~harness.meta.family.evalstats`
    (``curves``, ``finals``, ``costs``, ``steps``) and ``names`` (the task names, in order)."""
    frame = pd.concat(
        [pd.read_csv(part_path(out, k)) for k in range(sample.count)],
        ignore_index=True,
    )
    frame = with_status(frame)
    names = [sample.task(k).name for k in range(sample.count)]
    steps = np.array(sorted(frame.loc[frame["split"] == "train", "step"].unique()))
    num_rows = len(rates) + len(ROLES)
    shape = (sample.count, num_rows, sample.seeds)
    curves = np.full((*shape, len(steps)), np.nan)
    finals = np.full((*shape, 3), np.nan)
    costs = np.full((sample.count, num_rows), np.nan)
    row_of: dict[str, int] = {}
    for hp in frame["hparams"].unique():
        data = json.loads(hp)
        if "lr" in data:
            row_of[hp] = min(range(len(rates)), key=lambda i: abs(math.log(rates[i] / data["lr"])))
        else:
            row_of[hp] = len(rates) + ROLES.index(data["theta"])
    k = frame["task"].map({n: i for i, n in enumerate(names)}).to_numpy()
    o = frame["hparams"].map(row_of).to_numpy()
    s = (frame["seed"] - sample.first_seed).to_numpy()
    c = np.searchsorted(steps, frame["step"].to_numpy())
    train = (frame["split"] == "train").to_numpy()
    curves[k[train], o[train], s[train], c[train]] = frame["value"].to_numpy()[train]
    finals[..., 0] = curves[..., -1]
    for j, split in enumerate(("valid", "test"), start=1):
        m = (frame["split"] == split).to_numpy()
        finals[k[m], o[m], s[m], j] = frame["value"].to_numpy()[m]
    cost = frame["tags"].map(lambda t: json.loads(t)["seconds_per_step"]).to_numpy()
    costs[k, o] = cost
    if np.isnan(curves).any() or np.isnan(finals).any():
        raise ValueError(f"{out / PARTS}: the parts do not hold every run's measurements")
    return {
        "frame": frame,
        "curves": curves,
        "finals": finals,
        "costs": costs,
        "steps": steps,
        "names": names,
    }


def candidate_rows(rates: list[float], adam_default: float) -> dict[str, int]:
    """Optimizer row of each candidate: the learned theta, the initial one, Adam's default."""
    default = min(range(len(rates)), key=lambda i: abs(math.log(rates[i] / adam_default)))
    return {"learned": len(rates), "initial": len(rates) + 1, "adam default": default}


def per_task_table(
    arrays: dict[str, Any], sample: Any, rates: list[float], rows: dict[str, int]
) -> pd.DataFrame:
    """One row per (task, candidate): tuned rates, target, steps, speedups, test losses and the
    per-seed paired test-loss difference with its seed-bootstrap interval."""
    grid = len(rates)
    table = evalstats.task_table(
        arrays["curves"], arrays["finals"], arrays["costs"], arrays["steps"], grid
    )
    finals = arrays["finals"]
    records = []
    for k, name in enumerate(arrays["names"]):
        task = sample.task(k)
        tt, tv = int(table.tuned_train[k]), int(table.tuned_valid[k])
        for label, r in rows.items():
            diffs = finals[k, r, :, 2] - finals[k, tv, :, 2]
            mean, low, high = evalstats.seed_interval(diffs, seed=k)
            records.append(
                {
                    "task": name,
                    "dataset": task.dataset,
                    "hidden": "-".join(map(str, task.hidden)),
                    "activation": task.activation,
                    "num_params": task.num_params,
                    "candidate": label,
                    "tuned_lr_train": rates[tt],
                    "tuned_lr_valid": rates[tv],
                    "target_train_loss": table.target[k],
                    "final_train_loss": finals[k, r, :, 0].mean(),
                    "adam_steps_to_target": table.steps_to_target[k, tt],
                    "steps_to_target": table.steps_to_target[k, r],
                    "speedup_steps": table.speedup_steps[k, r],
                    "cost_ratio": arrays["costs"][k, r] / arrays["costs"][k, tt],
                    "speedup_wall": table.speedup_wall[k, r],
                    "test_loss": table.test[k, r],
                    "tuned_adam_test_loss": table.test[k, tv],
                    "test_diff": mean,
                    "test_diff_low": low,
                    "test_diff_high": high,
                }
            )
    return pd.DataFrame.from_records(records)


def per_run_table(arrays: dict[str, Any], rates: list[float], learner: str) -> pd.DataFrame:
    """One row per (task, seed, optimizer): final train, valid and test losses and the steps to
    the task's target (tuned Adam's mean final training loss; inf: never reached)."""
    curves, finals = arrays["curves"], arrays["finals"]
    table = evalstats.task_table(curves, finals, arrays["costs"], arrays["steps"], len(rates))
    reached = evalstats.first_reach(curves, table.target[:, None, None], arrays["steps"])
    names = [f"adam lr={r:g}" for r in rates] + [f"{learner} {role} theta" for role in ROLES]
    k, o, s = np.meshgrid(*(np.arange(n) for n in curves.shape[:3]), indexing="ij")
    k, o, s = k.ravel(), o.ravel(), s.ravel()
    return pd.DataFrame(
        {
            "task": np.array(arrays["names"])[k],
            "optimizer": np.array(names)[o],
            "seed_index": s,
            "final_train_loss": finals[k, o, s, 0],
            "final_valid_loss": finals[k, o, s, 1],
            "final_test_loss": finals[k, o, s, 2],
            "target_train_loss": table.target[k],
            "steps_to_target": reached[k, o, s],
        }
    )


def write_report(out: Path, sample: Any, cfg: Any, checkpoint: Path, trained: str = "") -> None:
    """``evaluation.csv.gz``, ``per_task.csv``, ``summary.md`` and ``speedups.png`` in ``out``
    (``trained``: one line on how the checkpoint was meta-trained)."""
    rates = [float(r) for r in cfg.lr_grid]
    arrays = load_arrays(out, sample, rates)
    write_atomically(
        out / "evaluation.csv.gz",
        lambda t: arrays["frame"].to_csv(t, index=False, compression="gzip"),
    )
    rows = candidate_rows(rates, cfg.adam_default)
    learner = str(
        arrays["frame"].loc[arrays["frame"]["hparams"].str.contains("theta"), "optimizer"].iloc[0]
    )
    per_run = per_run_table(arrays, rates, learner)
    write_atomically(out / "per_run.csv", lambda t: per_run.to_csv(t, index=False))
    per_task = per_task_table(arrays, sample, rates, rows)
    write_atomically(out / "per_task.csv", lambda t: per_task.to_csv(t, index=False))
    args = (arrays["curves"], arrays["finals"], arrays["costs"], arrays["steps"], len(rates))
    table = evalstats.task_table(*args)
    heads = {label: evalstats.headline(table, r) for label, r in rows.items()}
    seeds_ci = evalstats.bootstrap(*args, list(rows.values()), cfg.bootstrap)
    both_ci = evalstats.bootstrap(*args, list(rows.values()), cfg.bootstrap, tasks_too=True)
    text = summary_text(cfg, sample, checkpoint, arrays, rows, heads, seeds_ci, both_ci, trained)
    write_atomically(out / "summary.md", lambda t: t.write_text(text))
    plot(out / "speedups.png", per_task, sample)


def _fmt(value: float, ci: tuple[float, float], pct: bool) -> str:
    return f"{value:.0%} {_ci(ci, pct)}" if pct else f"{value:.3g} {_ci(ci, pct)}"


def _ci(ci: tuple[float, float], pct: bool) -> str:
    return f"[{ci[0]:.0%}, {ci[1]:.0%}]" if pct else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def summary_text(
    cfg: Any,
    sample: Any,
    checkpoint: Path,
    arrays: dict[str, Any],
    rows: dict[str, int],
    heads: dict[str, dict[str, float]],
    seeds_ci: dict[int, dict[str, tuple[float, float]]],
    both_ci: dict[int, dict[str, tuple[float, float]]],
    trained: str,
) -> str:
    """The Markdown summary (see :func:`write_report`)."""
    costs = arrays["costs"]
    ratio = costs[:, rows["learned"]] / costs[:, rows["adam default"]]
    rates = ", ".join(f"{r:g}" for r in cfg.lr_grid)
    lines = [
        f"# lopt evaluate-family: {checkpoint}",
        "",
        f"Command: `lopt evaluate-family checkpoint={cfg.checkpoint} family={cfg.family} "
        f"tasks={sample.count} seeds={sample.seeds} steps={sample.steps} out={cfg.out}`",
        "",
        f"- Candidate: {trained or checkpoint}.",
        f"- Sample: {sample.count} tasks of `{cfg.family}`, member seeds "
        f"{sample.member_seed(0)}..{sample.member_seed(sample.count - 1)} (never drawn by "
        f"meta-training nor by its held-out judge), {sample.seeds} evaluation seeds each "
        f"({sample.first_seed}..{sample.first_seed + sample.seeds - 1}: initialisation and data "
        f"order), {sample.steps} steps, whole-training-split loss at {len(arrays['steps'])} "
        "checkpoints.",
        f"- Adam grid: {rates}. Tuned Adam per task: lowest mean final training loss (speed), "
        "lowest mean final validation loss (test loss). Target: tuned Adam's mean final training "
        "loss; a run reaches it at the first checkpoint where its mean training loss is at or "
        "below it.",
        "- Wall-clock is modelled: steps x each optimizer's measured seconds per whole training "
        "step on one problem of the task (one thread, harness.timing.Stopwatch, alternating, min "
        f"of 3 rounds of {cfg.timing_steps} steps); the learned step costs "
        f"{np.median(ratio):.2f}x Adam's (median over tasks; {ratio.min():.2f}-{ratio.max():.2f}).",
        f"- Intervals: 95 % percentile bootstrap ({cfg.bootstrap} resamples) over evaluation "
        "seeds, paired (the same seeds for every task and optimizer; tuned Adam re-chosen); "
        "in brackets after `|`, tasks resampled too.",
        "",
        "| candidate | faster (wall) | faster (steps) | median speedup wall | median speedup "
        "steps | test below tuned Adam | median test diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        h, a, b = heads[label], seeds_ci[r], both_ci[r]
        cells = [
            f"{_fmt(h[n], a[n], n.startswith('frac'))} \\| {_ci(b[n], n.startswith('frac'))}"
            for n in evalstats.HEADLINE
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    finals = arrays["finals"][..., 0].mean(axis=2)  # [K, O]
    target = evalstats.task_table(
        arrays["curves"], arrays["finals"], arrays["costs"], arrays["steps"], len(cfg.lr_grid)
    ).target
    ratios = ", ".join(
        f"{label} {np.median(finals[:, r] / target):.3g}x" for label, r in rows.items()
    )
    lines += [
        "",
        f"Median over tasks of the final training loss over tuned Adam's: {ratios}.",
    ]
    h = heads["learned"]
    speed_met = (
        h["frac_faster_wall"] >= TARGET_FRACTION and h["median_speedup_wall"] >= TARGET_SPEEDUP
    )
    test_met = h["frac_test_lower"] > 0.5
    lines += [
        "",
        "Targets (the learned theta, zero tuning trials):",
        "",
        f"- faster than per-task-tuned Adam on >= {TARGET_FRACTION:.0%} of tasks with a median "
        f"wall-clock speedup >= {TARGET_SPEEDUP}x: **{'met' if speed_met else 'MISSED'}** "
        f"({h['frac_faster_wall']:.0%} of tasks, median {h['median_speedup_wall']:.3g}x).",
        f"- mean test loss below tuned-on-valid Adam's on most tasks: "
        f"**{'met' if test_met else 'MISSED'}** ({h['frac_test_lower']:.0%} of tasks, median "
        f"difference {h['median_test_diff']:+.3g}).",
        "",
        "Speedup 0: the candidate never reached the target within the steps. Per task: "
        "`per_task.csv`; per task, seed and optimizer: `per_run.csv`; every measurement: "
        "`evaluation.csv.gz`; figure: `speedups.png`.",
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, per_task: pd.DataFrame, sample: Any) -> None:
    """Per task (each panel sorted): the wall-clock speedup ('never reached' at the bottom), the
    final training loss over tuned Adam's and the test-loss difference against tuned-on-valid
    Adam, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for label in CANDIDATES:
        part = per_task[per_task["candidate"] == label]
        ratio = np.sort((part["final_train_loss"] / part["target_train_loss"]).to_numpy())
        middle.plot(np.arange(1, len(ratio) + 1), ratio, marker=".", label=label)
        speed = np.sort(part["speedup_wall"].to_numpy())[::-1]
        left.plot(np.arange(1, len(speed) + 1), np.maximum(speed, 0.01), marker=".", label=label)
        diff = np.sort(part["test_diff"].to_numpy())
        right.plot(np.arange(1, len(diff) + 1), diff, marker=".", label=label)
    left.set_yscale("log")
    left.axhline(1.0, color="grey", lw=0.8)
    left.axhline(TARGET_SPEEDUP, color="grey", lw=0.8, ls="--")
    left.set_xlabel("task (sorted)")
    left.set_ylabel("wall-clock speedup vs tuned Adam (0.01: never)")
    middle.set_yscale("log")
    middle.axhline(1.0, color="grey", lw=0.8)
    middle.set_xlabel("task (sorted)")
    middle.set_ylabel("final training loss / tuned Adam's")
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_xlabel("task (sorted)")
    right.set_ylabel("test loss - tuned-on-valid Adam's")
    left.legend()
    fig.suptitle(f"{sample.count} held-out {sample.family} tasks, {sample.seeds} seeds")
    fig.tight_layout()
    write_atomically(path, lambda t: fig.savefig(t, format="png", dpi=100))
    plt.close(fig)
