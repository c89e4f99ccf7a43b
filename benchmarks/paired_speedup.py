"""A learned optimizer against a tuned reference on the same fresh seeds, seed by seed.

Reads one tidy results file (``lopt bench`` rows) holding runs of ``--reference`` and
``--candidate`` on one task with the same seeds, and prints per seed and as medians with 95 %
paired bootstrap intervals (seeds resampled, the two optimizers together):

* the target: ``--target``, or else the reference's mean final training loss over these seeds
  (the paper suite's speed target is the best tuned baseline's mean final training loss over
  its seeds: pass it to hold fresh seeds to the suite's own bar; a mean over seeds is pulled up
  by one bad seed);
* time to the target (steps, and timed seconds) for both; a reference run that never reaches it
  counts with its whole run (a lower bound on its time, so the speedup is understated there);
* the speedup, reference over candidate (0 where the candidate never reaches the target), and
  on how many seeds it is at least ``--factor``;
* the final test loss of each and the candidate's minus the reference's;
* late spikes: candidate runs whose training loss exceeds ``--spike`` after half the run.

Example (the command behind ``results/fresh-seeds/``)::

    python benchmarks/paired_speedup.py results/fresh-seeds/mnist5k_cnn16_train.csv \\
        --reference adam --candidate nominal_mlp_mlp_mix_train --target 1.011e-05

Exit status (``benchmarks/verdict.py``): 0 when every seed's speedup in seconds is at least
``--factor`` and no candidate run spikes late, 3 when not (a missed target), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from verdict import verdict

from harness.errors import UsageError
from harness.meta.family.evalstats import seed_interval
from harness.results.derived import time_to_target
from harness.results.io import read_results

RESAMPLES = 10_000


def finals(frame: pd.DataFrame, split: str) -> pd.Series:
    """Each run's last loss on ``split``, indexed by (optimizer, seed)."""
    rows = frame[(frame["split"] == split) & (frame["metric"] == "loss")]
    last = rows.sort_values("step").groupby(["optimizer", "seed"]).tail(1)
    return last.set_index(["optimizer", "seed"])["value"]


def per_seed(
    frame: pd.DataFrame, reference: str, candidate: str, spike: float, target: float | None
) -> pd.DataFrame:
    """One row per seed: times to the target, speedups, test losses, late spikes."""
    train = finals(frame, "train")
    seeds = sorted(set(train[reference].index) & set(train[candidate].index))
    if len(seeds) < 2:
        raise UsageError(f"need at least 2 seeds run by both {reference} and {candidate}")
    if target is None:
        target = float(train[reference].loc[seeds].mean())
    times = time_to_target(frame, target).set_index(["optimizer", "seed"])
    test = finals(frame, "test")
    rows = []
    for seed in seeds:
        ref, cand = times.loc[(reference, seed)], times.loc[(candidate, seed)]
        ref_steps = ref["steps_to_target"] if ref["reached"] else ref["final_step"]
        ref_seconds = ref["seconds_to_target"] if ref["reached"] else ref["final_wall_time_s"]
        curve = frame[
            (frame["optimizer"] == candidate)
            & (frame["seed"] == seed)
            & (frame["split"] == "train")
            & (frame["metric"] == "loss")
        ]
        late = curve[curve["step"] > curve["step"].max() / 2]["value"]
        rows.append(
            {
                "seed": seed,
                "target": target,
                "reference_reached": bool(ref["reached"]),
                "reference_steps": ref_steps,
                "candidate_steps": cand["steps_to_target"],
                "speedup_steps": ref_steps / cand["steps_to_target"] if cand["reached"] else 0.0,
                "reference_seconds": ref_seconds,
                "candidate_seconds": cand["seconds_to_target"],
                "speedup_seconds": (
                    ref_seconds / cand["seconds_to_target"] if cand["reached"] else 0.0
                ),
                "reference_test": float(test[(reference, seed)]),
                "candidate_test": float(test[(candidate, seed)]),
                "late_spike": bool((late > spike).any() or not np.isfinite(late).all()),
            }
        )
    table = pd.DataFrame(rows)
    table["test_diff"] = table["candidate_test"] - table["reference_test"]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--reference", default="adam")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--spike", type=float, default=1e-2)
    parser.add_argument("--target", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        frame = read_results(args.results)
        for name in (args.reference, args.candidate):
            if name not in set(frame["optimizer"]):
                raise UsageError(f"{args.results} has no runs of {name!r}")
        if frame["task"].nunique() != 1:
            raise UsageError(f"{args.results} must hold one task, not {frame['task'].nunique()}")
        table = per_seed(frame, args.reference, args.candidate, args.spike, args.target)
    except UsageError as exc:
        print(f"paired_speedup: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    n = len(table)
    print(
        f"\n{frame['task'].iloc[0]}: {args.candidate} against {args.reference} on {n} seeds "
        f"({', '.join(str(s) for s in table['seed'])}); target train loss "
        f"{table['target'].iloc[0]:.4g} ({'given' if args.target else 'the reference mean'}; "
        f"reached by {args.reference} on "
        f"{int(table['reference_reached'].sum())} of {n})"
    )
    for column in ("speedup_steps", "speedup_seconds"):
        mid, low, high = seed_interval(table[column], RESAMPLES, stat=np.median)
        at_least = int((table[column] >= args.factor).sum())
        print(
            f"{column}: median {mid:.3g}x [{low:.3g}, {high:.3g}], min "
            f"{table[column].min():.3g}x; >= {args.factor}x on {at_least} of {n} seeds"
        )
    mid, low, high = seed_interval(table["test_diff"], RESAMPLES)
    print(
        f"test loss: {args.candidate} {table['candidate_test'].mean():.4g}, {args.reference} "
        f"{table['reference_test'].mean():.4g}; mean paired difference {mid:+.4g} "
        f"[{low:+.4g}, {high:+.4g}]"
    )
    spikes = int(table["late_spike"].sum())
    print(f"late spikes (train loss > {args.spike:g} after half the run): {spikes} of {n}")
    met = bool((table["speedup_seconds"] >= args.factor).all()) and spikes == 0
    slowest = table["speedup_seconds"].min()
    return verdict(
        met,
        f"{args.candidate} reaches the target >= {args.factor}x sooner in seconds on every seed "
        f"and never spikes late (slowest seed {slowest:.3g}x, {spikes} late spikes)",
    )


if __name__ == "__main__":
    sys.exit(main())
