"""The differentiable unroll's two inner gradients, side by side: which is faster?

One truncation of B problems of one ``mlp_mix`` architecture with ``nominal_mlp`` (eager: the
path autograd takes), timed as forward plus the backward of the summed outer loss to theta
(:func:`harness.meta.batched.differentiable.unroll_with_graph`), for ``inner_grad=closed``
(the engine's closed-form backward written out of place) and ``inner_grad=autograd``
(``create_graph=True``), and the engine's no-grad :func:`harness.meta.batched.unroll` (what
one ES row costs) for scale. The three run in turn, ``--rounds`` times; the medians of process
time (one thread) are printed with their ratios. Exit 0 (no target); anything else: a crash.

Usage::

    python benchmarks/differentiable_unroll.py [--arch-seed 26] [--rows 32] [--steps 50]
        [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from harness.meta.batched import ProblemBatch, unroll
from harness.meta.batched.differentiable import unroll_with_graph
from harness.meta.family.problems import outer_loss
from harness.registry import create_learner
from tasks.families import sample_group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch-seed", type=int, default=26)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tasks = sample_group("mlp_mix", args.arch_seed, list(range(args.rows)))
    batch = ProblemBatch(tasks, [100 + i for i in range(args.rows)])
    learner = create_learner("nominal_mlp", compile=False)
    w = batch.init_params()
    state = learner.batched_init(w)
    theta = learner.init_theta(0).expand(args.rows, -1).clone()
    theta += 0.01 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(0))
    step = torch.zeros(args.rows, dtype=torch.int64)
    horizon = torch.full((args.rows,), 2000, dtype=torch.int64)

    def rp(method: str) -> None:
        leaf = theta.clone().requires_grad_(True)
        _, _, _, losses = unroll_with_graph(
            batch, learner, leaf, w, state, step, horizon, args.steps, inner_grad=method
        )
        torch.autograd.grad(outer_loss(losses).sum(), leaf)

    def forward_only() -> None:
        with torch.no_grad():
            unroll(batch, learner, theta, w, state, step, horizon, args.steps)

    cases = {"closed": lambda: rp("closed"), "autograd": lambda: rp("autograd")}
    cases["no-grad unroll"] = forward_only
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    spec = tasks[0]
    print(
        f"mlp_mix architecture {spec.group_key} ({batch.num_params} weights), {args.rows} rows, "
        f"{args.steps} steps, nominal_mlp eager, one thread, median of {args.rounds} rounds:"
    )
    base = statistics.median(times["no-grad unroll"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:15s} {median:8.3f} CPU-s   {median / base:5.2f}x the no-grad unroll")
    closed, auto = (statistics.median(times[n]) for n in ("closed", "autograd"))
    print(f"closed / autograd = {closed / auto:.2f} (below 1: the closed form is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
