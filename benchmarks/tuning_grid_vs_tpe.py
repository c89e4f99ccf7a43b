"""Does TPE with 20 trials find what a dense grid finds? (issue 3's acceptance check)

Tunes Adam's learning rate on ``mnist5k_cnn16`` twice with the same protocol (objective: the
validation loss after ``--budget-steps`` steps, one tuning seed, no pruning): once over a dense
13-point log grid on [1e-5, 1] (DeepOBS-style), once with TPE for 20 trials (the default first
trial is Adam's default lr, 1e-3). Prints both best objectives and their ratio; exits 3
(``verdict.MISSED``) unless TPE lands within ``--tolerance`` (2%) of the grid's best, or below it.

    python benchmarks/tuning_grid_vs_tpe.py [--budget-steps 300] [--storage URL]

The objective values are deterministic (fixed seeds, whole-split evaluation), so the verdict
does not depend on the machine's load; only the run time does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from verdict import MISSED

from harness.tuning.tuner import TuneSettings, tune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-steps", type=int, default=300)
    parser.add_argument("--grid-points", type=int, default=13)
    parser.add_argument("--tpe-trials", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--storage", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        storage = args.storage or f"sqlite:///{folder}/optuna.db"
        common = dict(
            task="mnist5k_cnn16",
            optimizer="adam",
            objective="valid_loss",
            budget_steps=args.budget_steps,
            pruner="none",
            eval_seeds=0,
            storage=storage,
            out=f"{folder}/out",
        )
        results = {}
        for sampler, trials in (("grid", args.grid_points), ("tpe", args.tpe_trials)):
            started = time.perf_counter()
            outcome = tune(
                TuneSettings(
                    **common, sampler=sampler, trials=trials, grid_points=args.grid_points
                ),
                log=lambda message: print(f"  {message}", flush=True),
            )
            results[sampler] = outcome
            print(
                f"{sampler}: {trials} trials in {time.perf_counter() - started:.0f} s, best "
                f"valid loss {outcome.best_value:.5f} at lr {outcome.best_hparams['lr']:.3g}",
                flush=True,
            )
    grid, tpe = results["grid"].best_value, results["tpe"].best_value
    ratio = tpe / grid
    verdict = "OK" if ratio <= 1 + args.tolerance else "FAIL"
    print(
        f"TPE best / grid best = {tpe:.5f} / {grid:.5f} = {ratio:.4f}: {verdict} "
        f"(limit {1 + args.tolerance:.2f}; budget {args.budget_steps} steps)"
    )
    return 0 if verdict == "OK" else MISSED


if __name__ == "__main__":
    sys.exit(main())
