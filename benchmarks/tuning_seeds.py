"""How many tuning seeds should a study's objective average? (issue 12: ``seeds=N``)

Trains one optimizer at a few learning rates near its optimum, each with several seeds, at the
paper's protocol (2,000 steps, batch 128, whole-split evaluations every 100 steps, one thread),
and prints, for the final train and valid losses:

* per learning rate: the mean and the seed-to-seed standard deviation;
* for the two best learning rates: the gap between their means and the seed standard deviation
  ``sigma_d`` of their same-seed difference (the tuner gives every trial the same tuning seeds,
  so this is the noise that decides which of two candidates wins);
* for ``N`` seeds: the noise left (``sigma_d / sqrt(N)``) against the cost (``N`` times the
  measured seconds of one trial), and how often the ``N``-seed objective picks another learning
  rate than the all-seed means do, over every choice of ``N`` of the seeds.

The recommended ``N`` is the smallest with ``2 sigma_d / sqrt(N) <= gap``: the two best
candidates are then told apart at two standard deviations.

    python benchmarks/tuning_seeds.py [--task mnist5k_cnn16] [--lrs 1e-3,3e-3,1e-2] [--seeds 3]

Runs are saved as they finish (``--out``, default ``results/paper/tuning/seeds_<task>.csv``),
so an interrupted measurement continues where it stopped, and a finished one is only reported.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tuning_common import OBJECTIVES, final_losses

from harness.plan import RunPlan, execute
from harness.results.io import read_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--train-size", type=int, default=None, help="task.train_size")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lrs = [float(v) for v in args.lrs.split(",")]
    task_cfg = {"train_size": args.train_size} if args.train_size else {}
    out = Path(args.out or f"results/paper/tuning/seeds_{args.task}.csv")
    plans = [
        RunPlan(
            task=args.task,
            optimizer=args.optimizer,
            seed=seed,
            suite="tuning-seeds",
            steps=args.steps,
            hparams={"lr": lr},
            task_cfg=task_cfg,
            eval_every=100,
            log_every=args.steps,
        )
        for lr in lrs
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    frame = read_results(out) if out.is_file() else None
    if frame is None or not {plan.run_id() for plan in plans} <= set(frame.run_id):
        frame = execute(plans, out, progress_bars=False)
    frame = frame[frame.run_id.isin({plan.run_id() for plan in plans})]
    print(f"{len(plans)} runs in {out} ({time.perf_counter() - started:.0f} s this invocation)")
    print(report(frame, args.seeds))
    return 0


def wrong_pick_rate(runs: pd.DataFrame, objective: str, n: int) -> float:
    """Over every choice of ``n`` of the seeds, shared by all lrs as the tuner shares its tuning
    seeds: how often the ``n``-seed means' argmin differs from the all-seed means' argmin."""
    table = runs.pivot(index="seed", columns="lr", values=objective)
    truth = table.mean().idxmin()
    picks = [table.loc[list(c)].mean().idxmin() for c in itertools.combinations(table.index, n)]
    return sum(pick != truth for pick in picks) / len(picks)


def report(frame: pd.DataFrame, seeds: int) -> str:
    """The measurement's summary (see the module docstring)."""
    runs = final_losses(frame)
    trial_seconds = float(runs.seconds.mean())
    lines = [f"one trial (one seed): {trial_seconds:.1f} s of timed training on average"]
    for objective in OBJECTIVES:
        table = runs.pivot(index="seed", columns="lr", values=objective)
        means, stds = table.mean(), table.std()
        lines.append(f"\n{objective}:")
        for lr in table.columns:
            lines.append(
                f"  lr {lr:.3g}: {means[lr]:.5g} +- {stds[lr]:.3g} "
                f"({stds[lr] / means[lr]:.1%} of the mean, {len(table)} seeds)"
            )
        best, second = means.sort_values().index[:2]
        gap = float(means[second] - means[best])
        paired = float((table[second] - table[best]).std())
        needed = max(1, math.ceil((2 * paired / gap) ** 2)) if gap > 0 else math.inf
        lines.append(
            f"  best lr {best:.3g}, runner-up {second:.3g}: gap {gap:.4g}, seed std of the "
            f"same-seed difference {paired:.4g}"
        )
        for n in range(1, seeds + 1):
            wrong = wrong_pick_rate(runs, objective, n)
            noise = paired / math.sqrt(n)
            lines.append(
                f"  N={n}: difference noise {noise:.4g} ({noise / gap:.0%} of the gap), cost "
                f"{n * trial_seconds:.0f} s per trial, picks another lr with "
                f"{wrong:.0%} of the {n}-seed subsets"
            )
        lines.append(
            f"  recommended N ({objective}): {needed} (the smallest with 2 noise <= the gap: the "
            f"two best lrs told apart at 2 sigma)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
