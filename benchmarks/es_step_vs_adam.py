"""What does an inner step of ES or PES meta-training cost, against an Adam training step?

The unit on the Adam side is the harness runner's training step
(:func:`harness.runner.make_train_step`: the minibatch gradient, then the update under
``no_grad``). On the meta side it is one inner
step of a truncation as :meth:`harness.meta.truncation.InnerProblems.unroll` runs it for ES and
PES (``grad_mode="none"``): the minibatch gradient, the learned optimizer's update with
``theta + eps``, and the outer-loss evaluation the objective asks for, measured for:

* ``fresh``: K = 1 fresh outer batch after every step (the paper's);
* ``fresh/5``: the same, evaluated every 5 steps (``outer_every=5``);
* ``inner``: the loss of the next inner batch (``outer_data=inner``: no extra forward pass but
  one per truncation).

Both antithetic sides run each step, so the script prints two ratios per variant: **per side**
(one unrolled inner step against one Adam step; the limit, 1.5 by default, applies to it) and
**per pair** (both sides against one Adam step, at least twice the per-side one by
construction: each side trains its own copy of the model). PES costs what ES costs: the same
unrolls from two states instead of one (checked: the ``pes`` row runs
:class:`harness.meta.estimators.PESEstimator` itself).

In one process, for R rounds in rotating order, every variant runs a truncation of T steps from
the same state over the same batches (drawn before the clock starts); ``gc.collect()`` runs
before each block, outside the clock. Medians over rounds.

Usage::

    python benchmarks/es_step_vs_adam.py [--threads 1] [--unroll 20] [--rounds 9]
        [--checkpoint lopt_mnist5k_train] [--limit 1.5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from itertools import islice

import torch
from verdict import verdict

from harness.meta.estimators import PESEstimator, PESState
from harness.meta.truncation import InnerProblems
from harness.registry import create_optimizer, create_task
from harness.runner import make_train_step

LIMIT = 1.5
SIGMA = 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--checkpoint", default="lopt_mnist5k_train")
    parser.add_argument("--limit", type=float, default=LIMIT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    task = create_task(args.task)
    served = create_optimizer("lopt", checkpoint=args.checkpoint)
    learner, theta = served.learner, served.theta
    adam = create_optimizer("adam")
    adam_step = make_train_step(task, adam)
    batches = list(islice(task.batches("train", 0), args.unroll))
    params0 = task.init_params(0)
    noise = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0))

    def problems(**objective) -> InnerProblems:
        return InnerProblems(
            task,
            learner,
            num_problems=1,
            horizon=10**9,
            outer_batches=1,
            objective="train",
            seed=0,
            **objective,
        )

    variants = {"fresh": problems(), "fresh/5": problems(outer_every=5)}
    variants["inner"] = problems(outer_data="inner")
    start = variants["fresh"].fresh_state(0, 0)
    datas = {name: inner.data(0, start, args.unroll) for name, inner in variants.items()}

    def adam_block() -> float:
        params, state = params0, adam.init(params0)
        gc.collect()
        began = time.perf_counter()
        for batch in batches:
            params, state, _ = adam_step(params, state, batch)
        return time.perf_counter() - began

    def pair_block(name: str) -> float:
        inner, data = variants[name], datas[name]
        gc.collect()
        began = time.perf_counter()
        for sign in (1.0, -1.0):
            inner.unroll(theta + sign * SIGMA * noise, start, data, grad_mode="none")
        return time.perf_counter() - began

    pes = PESEstimator(sigma=SIGMA)
    pes_inner = variants["inner"]

    def pes_block() -> float:
        state = PESState(start, start, torch.zeros_like(theta))
        gc.collect()
        began = time.perf_counter()
        pes.estimate(pes_inner, theta, {0: noise}, {0: state}, {0: datas["inner"]})
        return time.perf_counter() - began

    blocks = {"adam": adam_block, **{n: (lambda n=n: pair_block(n)) for n in variants}}
    blocks["pes (inner)"] = pes_block
    for block in blocks.values():  # warm-up, untimed
        block()
    times: dict[str, list[float]] = {name: [] for name in blocks}
    ratios: dict[str, list[float]] = {name: [] for name in blocks if name != "adam"}
    names = list(blocks)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        measured = {name: blocks[name]() for name in names[shift:] + names[:shift]}
        for name, seconds in measured.items():
            times[name].append(seconds / args.unroll * 1e3)
            if name != "adam":
                ratios[name].append(measured[name] / measured["adam"])
    adam_ms = statistics.median(times["adam"])
    print(
        f"{args.task}, learner {learner.family} ({args.checkpoint}), K=1, T={args.unroll}, "
        f"threads={torch.get_num_threads()}, {args.rounds} rounds; Adam step {adam_ms:.2f} ms"
    )
    print(f"{'variant':<12} {'pair ms/step':>12} {'per side':>9} {'per pair':>9}")
    missed = 0
    for name, values in ratios.items():
        pair = statistics.median(values)
        side = pair / 2
        print(f"{name:<12} {statistics.median(times[name]):>12.2f} {side:>8.2f}x {pair:>8.2f}x")
        if name.startswith("pes") or name == "inner":
            missed = max(missed, int(side > args.limit))
    return verdict(
        missed == 0, f"limit {args.limit} per side for the cheapest ES/PES variants (inner)"
    )


if __name__ == "__main__":
    sys.exit(main())
