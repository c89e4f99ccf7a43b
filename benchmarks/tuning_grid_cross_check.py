"""Is the tuned learning rate as good as a dense grid's best, at the paper's budget? (issue 12)

For one task and one learning-rate-only baseline (``sgd``, ``momentum``, ``nesterov``, ``adam``,
``rmsprop``: the studies search only ``lr``), trains a dense log-spaced grid over the optimizer's
declared learning-rate range (``--points``, default 25: five per decade for [1e-5, 1]; or over
``--low`` .. ``--high``) with the
tuning seeds ``0 .. --seeds-1``, at the paper's protocol (2,000 steps, batch 128, whole-split
evaluations every 100 steps), and the tuned learning rate of each objective's study with the
same seeds. One run gives both objectives (final train and valid loss), so the grid serves both.

For each objective it prints the grid's best (the lowest mean over the seeds), the tuned
learning rate's mean, and the grid's noise: ``sigma``, the seed standard deviation pooled over
the five best grid points, and the noise of a difference of two ``S``-seed means,
``sigma * sqrt(2 / S)``. The verdict is OK when the tuned mean exceeds the grid's best by at most
twice that (or is below it). Exit code 1 if any verdict fails.

    python benchmarks/tuning_grid_cross_check.py --task mnist5k_cnn16 [--optimizer adam]
        [--objective train_loss,valid_loss] [--tag paper] [--points 25] [--seeds 2]
    python benchmarks/tuning_grid_cross_check.py --task fmnist_cnn16 --train-size 10000

The study is looked up as ``lopt bench tuned=true`` does (``--storage``, default the paper's
``results/paper/optuna.db``; ``--tag``; the newest protocol version present). Runs are saved as
they finish (``--out``, default ``results/paper/tuning/grid_<task>_<optimizer>.csv``): an
interrupted check continues where it stopped, and a finished one is only reported. About
``(points + 2) * seeds`` runs of 10-15 s each on one thread (``--workers 2``: two at a time).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tuning_common import final_losses
from verdict import MISSED

from harness.plan import RunPlan, execute
from harness.registry import OPTIMIZERS
from harness.results.io import read_results
from harness.tuning.tuner import tuned_configuration

LR_ONLY = ("sgd", "momentum", "nesterov", "adam", "rmsprop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--train-size", type=int, default=None, help="task.train_size")
    parser.add_argument("--optimizer", default="adam", choices=LR_ONLY)
    parser.add_argument("--objective", default="train_loss,valid_loss")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--low", type=float, default=None, help="default: the declared range's")
    parser.add_argument("--high", type=float, default=None, help="default: the declared range's")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tag", default="")
    parser.add_argument("--storage", default="sqlite:///results/paper/optuna.db")
    parser.add_argument("--out", default=None)
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (1-thread each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task_cfg = {"train_size": args.train_size} if args.train_size else {}
    objectives = args.objective.split(",")
    tuned = {
        objective: tuned_configuration(
            task=args.task,
            optimizer=args.optimizer,
            objective=objective,
            budget_steps=args.steps,
            tag=args.tag,
            storage=args.storage,
            task_cfg=task_cfg,
        )
        for objective in objectives
    }
    spec = OPTIMIZERS.get(args.optimizer).factory.hparam("lr")
    low, high = args.low or spec.low, args.high or spec.high
    grid = [float(f"{v:.6g}") for v in np.geomspace(low, high, args.points)]
    tuned_lrs = sorted({float(hparams["lr"]) for hparams, _ in tuned.values()})

    def plans(lrs: list[float], suite: str) -> list[RunPlan]:
        return [
            RunPlan(
                task=args.task,
                optimizer=args.optimizer,
                seed=seed,
                suite=suite,
                steps=args.steps,
                hparams={"lr": lr},
                task_cfg=task_cfg,
                eval_every=100,
                log_every=args.steps,
            )
            for lr in lrs
            for seed in range(args.seeds)
        ]

    out = Path(args.out or f"results/paper/tuning/grid_{args.task}_{args.optimizer}.csv")
    started = time.perf_counter()
    grid_runs = run_or_read(plans(grid, "tuning-grid"), out, args.workers)
    tuned_runs = run_or_read(
        plans(tuned_lrs, "tuning-grid-tuned"), out.with_name(f"{out.stem}_tuned.csv"), args.workers
    )
    print(f"grid and tuned runs in {out} ({time.perf_counter() - started:.0f} s this invocation)")
    failures = 0
    for objective in objectives:
        hparams, tags = tuned[objective]
        verdict, ok = cross_check(grid_runs, tuned_runs, float(hparams["lr"]), objective)
        print(f"{args.task} {args.optimizer} {objective} (study {tags['study']}): {verdict}")
        failures += not ok
    return MISSED if failures else 0


def run_or_read(plans: list[RunPlan], out: Path, workers: int = 1) -> pd.DataFrame:
    """One row per run of ``plans`` (:func:`final_losses`), run into ``out`` unless it already
    holds them all."""
    ids = {plan.run_id() for plan in plans}
    frame = read_results(out) if out.is_file() else None
    if frame is None or not ids <= set(frame.run_id):
        frame = execute(plans, out, progress_bars=False, workers=workers)
    return final_losses(frame[frame.run_id.isin(ids)])


def cross_check(
    grid_runs: pd.DataFrame, tuned_runs: pd.DataFrame, tuned_lr: float, objective: str
) -> tuple[str, bool]:
    """The verdict line for one objective, and whether it is OK (see the module docstring)."""
    seeds = grid_runs.seed.nunique()
    means = grid_runs.groupby("lr")[objective].mean()
    stds = grid_runs.groupby("lr")[objective].std()
    finite = means[np.isfinite(means)]
    if finite.empty:
        return "every grid point diverged", False
    best_lr = float(finite.idxmin())
    near = finite.sort_values().index[:5]
    sigma = math.sqrt(float((stds[near] ** 2).mean()))
    noise = sigma * math.sqrt(2 / seeds)
    tuned = float(tuned_runs[np.isclose(tuned_runs.lr, tuned_lr)][objective].mean())
    excess = tuned - float(finite[best_lr])
    ok = math.isfinite(tuned) and excess <= 2 * noise
    return (
        f"grid best {finite[best_lr]:.5g} at lr {best_lr:.3g}; tuned lr {tuned_lr:.3g}: "
        f"{tuned:.5g} ({excess:+.3g}); noise of a {seeds}-seed difference {noise:.3g}: "
        f"{'OK' if ok else 'FAIL'} (limit +{2 * noise:.3g})",
        ok,
    )


if __name__ == "__main__":
    sys.exit(main())
