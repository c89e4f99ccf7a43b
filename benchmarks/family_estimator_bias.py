"""Is PES unbiased for the whole inner run on the batched engine, and is truncated ES not?

On ``--pairs`` pairs of one architecture of ``mlp_mix`` (the schedule seed picks it; seed 26:
8x8 images, one hidden layer of 16, GELU), a ``--horizon``-step inner run cut into truncations
of ``--truncation`` steps, Adam with a learned log learning-rate multiplier (``BatchedAdam``,
D = 1), theta = 0:

* whole-run antithetic ES (the reference): one direction per pair for the whole run;
* PES and truncated ES, each averaged over the run's truncations (fresh directions per
  truncation), on the same pairs (same tasks, inits, minibatches).

Prints each estimator's mean and standard error, and each one's paired difference from the
reference in standard errors. Verdict: PES within 3 standard errors and truncated ES outside.
Exit 0 both hold, 3 not (``benchmarks/verdict.py``), anything else: a crash.
tests/test_family_estimators.py asserts the same on the defaults.

Usage::

    python benchmarks/family_estimator_bias.py [--pairs 256] [--truncation 5] [--horizon 40]
        [--seed 26] [--lr 0.001]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from verdict import verdict

from harness.meta.batched import BatchedAdam
from harness.meta.family.estimators import (
    PESEstimator,
    TruncatedESEstimator,
    whole_run_es,
    whole_run_mean,
)
from harness.meta.family.pairs import PairSchedule

TOLERANCE = 3.0  # standard errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--truncation", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=40)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sigma", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    schedule = PairSchedule(
        "mlp_mix", args.seed, args.truncation, args.horizon, args.horizon, False, arch_groups=1
    )
    learner = BatchedAdam(lr=args.lr)
    theta = torch.zeros(1)
    pairs = range(args.pairs)

    def directions(k: int) -> torch.Tensor:
        return torch.randn(args.pairs, 1, generator=torch.Generator().manual_seed(1000 + k))

    start = time.process_time()
    reference = whole_run_es(schedule, learner, theta, directions(0), args.sigma, pairs)
    estimates = {
        "pes": whole_run_mean(
            PESEstimator(args.sigma), schedule, learner, theta, directions, pairs
        ),
        "tes": whole_run_mean(
            TruncatedESEstimator(args.sigma), schedule, learner, theta, directions, pairs
        ),
    }
    root = math.sqrt(args.pairs)
    print(
        f"{args.pairs} pairs, horizon {args.horizon} = {args.horizon // args.truncation} x "
        f"{args.truncation} steps, {time.process_time() - start:.1f} CPU-s"
    )
    print(
        f"whole-run ES: mean {float(reference.mean()):+.4f} +- {float(reference.std()) / root:.4f}"
    )
    distance = {}
    for name, value in estimates.items():
        diff = (value - reference)[:, 0]
        distance[name] = float(diff.mean()) / (float(diff.std()) / root)
        print(
            f"{name}: mean {float(value.mean()):+.4f} +- {float(value.std()) / root:.4f}; "
            f"minus whole-run ES {float(diff.mean()):+.4f} = {distance[name]:+.2f} standard errors"
        )
    unbiased = abs(distance["pes"]) < TOLERANCE
    biased = abs(distance["tes"]) >= TOLERANCE
    return verdict(
        unbiased and biased,
        f"PES {distance['pes']:+.2f} and truncated ES {distance['tes']:+.2f} standard errors from "
        f"whole-run ES (PES within {TOLERANCE}, truncated ES outside)",
    )


if __name__ == "__main__":
    sys.exit(main())
