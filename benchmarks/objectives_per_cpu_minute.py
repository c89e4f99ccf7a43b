"""Which outer objective moves a 2,000-step training loss the most per CPU-minute?

Meta-trains the paper's learner (``mlp``) on ``digits_mlp`` with a 2,000-step inner horizon,
once per variant, each for the same budget of meta-training seconds (``--seconds``, one thread,
one process, ``max_seconds``), and reads from each run's log the held-out evaluation that
``lopt meta-train`` does every ``eval_every`` outer steps: the learned optimizer run for the
whole 2,000 steps on fresh seeds, its final whole-split training loss. Variants (all
outer-train, B = 8, constant unrolls of 50 steps):

* ``pes-mean``, ``pes-log``, ``pes-final``: PES with three of the losses;
* ``es-mean``, ``es-log``, ``es-log_mean``: truncated antithetic ES with the paper's mean loss,
  the mean log loss and the log of the mean loss.

Runs go to ``--out/<variant>`` and are resumed when the script is rerun (each is a
``lopt meta-train`` folder), so it can be stopped and continued. It prints per variant the
held-out training loss before meta-training, the best and the last one, the CPU-minutes, and
the decades of training loss gained per CPU-minute (``log10(start / best) / minutes``), and
the held-out training loss of each variant's last evaluation within 1, 1.5 and 2 CPU-minutes
(the fair comparison: the runs share a wall-clock budget, and a loaded machine gives them
different CPU time).

Usage::

    python benchmarks/objectives_per_cpu_minute.py [--seconds 180] [--out outputs/objectives]
        [--only pes-log,es-mean] [--horizon 2000]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from harness.meta import meta_train

VARIANTS = {
    "pes-mean": {"estimator": "pes", "loss": "mean"},
    "pes-log": {"estimator": "pes", "loss": "log"},
    "pes-final": {"estimator": "pes", "loss": "final"},
    "es-mean": {"estimator": "es", "loss": "mean"},
    "es-log": {"estimator": "es", "loss": "log"},
    "es-log_mean": {"estimator": "es", "loss": "log_mean"},
}
COMMON = {
    "task": "digits_mlp",
    "horizon": 2000,
    "objective": "train",
    "problems": 8,
    "outer_batches": 1,
    "schedule": "constant",
    "unroll_length": 50,
    "lr": 3e-3,
    "outer_steps": 100_000,
    "parallel": "loop",
    "threads": 1,
    "checkpoint_every": 20,
    "eval_every": 20,
    "eval_seeds": 2,
    "progress": False,
}


def summary(folder: Path) -> dict[str, float]:
    log = pd.read_csv(folder / "meta_log.csv")
    held = log[log.metric == "heldout_train_loss"].sort_values("outer_step")
    cpu = log[log.metric == "cpu_seconds"].set_index("outer_step")["value"]
    start, best, last = held.value.iloc[0], held.value.min(), held.value.iloc[-1]
    minutes = float(cpu.iloc[-1]) / 60 if len(cpu) else math.nan
    at = {}
    for limit in (1.0, 1.5, 2.0):
        within = [s for s in held.outer_step if s == 0 or cpu.get(s, math.inf) / 60 <= limit]
        at[f"heldout_at_{limit:g}min"] = float(held.set_index("outer_step").value[max(within)])
    return {
        **at,
        "outer_steps": int(log.outer_step.max()),
        "heldout_start": start,
        "heldout_best": best,
        "heldout_last": last,
        "cpu_minutes": minutes,
        "decades_per_cpu_minute": math.log10(start / best) / minutes if minutes else math.nan,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--out", default="outputs/objectives")
    parser.add_argument("--only", default="", help="comma-separated variants")
    parser.add_argument(
        "--horizon", type=int, default=COMMON["horizon"], help="inner steps (2000; less: a try)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chosen = [v for v in args.only.split(",") if v] or list(VARIANTS)
    rows = []
    for name in chosen:
        folder = Path(args.out) / name
        spent = 0.0
        if (folder / "meta_log.csv").is_file():
            log = pd.read_csv(folder / "meta_log.csv")
            spent = float(log.loc[log.metric == "seconds", "value"].sum())
        if spent < args.seconds:  # the rest of the budget (a rerun continues a stopped run)
            budget = args.seconds - spent
            settings = {**COMMON, **VARIANTS[name], "horizon": args.horizon}
            meta_train(**settings, max_seconds=budget, out=str(folder))
        rows.append({"variant": name, **summary(folder)})
        print(f"{name}: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
