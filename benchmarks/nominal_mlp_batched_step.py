"""What does ``nominal_mlp.batched_step`` cost per parameter, against a flat batched Adam?

The batched meta-training engine updates B problems of one architecture as ``(B, N)`` rows
In one process, for R rounds in alternating order, this times S calls of
``batched_step`` (fused, or eager with ``--eager``) and S calls of Adam written on the same
``(B, N)`` rows (the six tensor operations of ``torch.optim.Adam``'s update, eager), on the
thread's CPU time, and prints each one's median nanoseconds per parameter (B x N) and the
median ratio. The rows are the parameters of B MLPs 64-32-10 (N = 2,410, four tensors), as in
the engine's first task family. As the engine's ``unroll``, it first keeps large blocks in the
heap (:mod:`harness.meta.batched.memory`; ``LOPT_KEEP_HEAP=0`` to measure without). There is
no limit (exit 0; 1 on a crash).

Usage::

    python benchmarks/nominal_mlp_batched_step.py [--problems 256] [--steps 20] [--rounds 9]
        [--eager] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback

import torch

from harness.meta.batched.memory import keep_large_allocations
from harness.registry import create_learner

SEGMENTS = (64 * 32, 32, 32 * 10, 10)  # MLP 64-32-10: weight, bias, weight, bias


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    b, n = args.problems, sum(SEGMENTS)
    heap = keep_large_allocations()  # as the engine's unroll does (LOPT_KEEP_HEAP=0: not)
    learner = create_learner("nominal_mlp", compile=not args.eager)
    gen = torch.Generator().manual_seed(0)
    theta = learner.init_theta(0) + 0.1 * torch.randn(b, learner.num_theta, generator=gen)
    w0 = torch.randn(b, n, generator=gen) * 0.1
    grads = [torch.randn(b, n, generator=gen) for _ in range(4)]
    step0 = torch.zeros(b, dtype=torch.long)
    horizon = torch.full((b,), 200, dtype=torch.long)

    def nominal_block() -> float:
        w, state, step = w0, learner.batched_init(w0), step0
        gc.collect()
        start = time.thread_time()
        for i in range(args.steps):
            w, state = learner.batched_step(theta, w, grads[i % 4], state, step, horizon, SEGMENTS)
            step = step + 1
        return time.thread_time() - start

    def adam_block() -> float:
        w, m, v = w0, torch.zeros_like(w0), torch.zeros_like(w0)
        gc.collect()
        start = time.thread_time()
        for i in range(args.steps):
            g, t = grads[i % 4], i + 1
            m = torch.lerp(m, g, 0.1)
            v = torch.addcmul(v * 0.999, g, g, value=0.001)
            denom = (v.sqrt() / (1 - 0.999**t) ** 0.5).add_(1e-8)
            w = torch.addcdiv(w, m, denom, value=-1e-3 / (1 - 0.9**t))
        return time.thread_time() - start

    with torch.no_grad():
        wall = time.perf_counter()
        nominal_block()  # compiles (once per process)
        first = time.perf_counter() - wall
        adam_block()
        times: dict[str, list[float]] = {"nominal": [], "adam": []}
        for round_index in range(args.rounds):
            order = ("adam", "nominal") if round_index % 2 == 0 else ("nominal", "adam")
            for name in order:
                seconds = nominal_block() if name == "nominal" else adam_block()
                times[name].append(seconds / (args.steps * b * n) * 1e9)
    ratios = [a / c for a, c in zip(times["nominal"], times["adam"], strict=True)]
    print(
        f"batched_step ({'eager' if args.eager else 'fused'}, hidden "
        f"{learner.settings.hidden}, layers {learner.settings.layers}) on B={b} x N={n}, "
        f"threads={torch.get_num_threads()}, first block {first:.1f} s; {args.rounds} rounds x "
        f"{args.steps} steps: nominal {statistics.median(times['nominal']):.1f} ns/param, "
        f"flat Adam {statistics.median(times['adam']):.1f} ns/param (CPU time); ratio median "
        f"{statistics.median(ratios):.2f}; large blocks from the heap: {heap}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
