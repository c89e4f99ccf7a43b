"""Throughput of the batched inner-loop engine against today's per-problem meta-training loop.

Issue 24's targets: at least 1e7 problem-steps per CPU-hour on one core for MLP-family problems,
with the learned optimizer and both antithetic sides included, and at least 15x the per-problem
loop of today's meta-training on the same problems.

A *problem-step* is one inner step of one problem on one antithetic side: the minibatch loss and
gradient, then the learned optimizer's update. For each architecture of the sample (one
``sample_group(family, arch_seed, ...)`` each), N antithetic pairs of problems (each problem its
own member seed, initialisation, data order and rescaling; its two sides share them and differ
in ``theta +- sigma * eps``), staggered over the horizon, run T steps:

* **batched** (``hand`` and ``vmap`` backends): one :class:`ProblemBatch` of 2N rows, advanced by
  :func:`harness.meta.batched.unroll` (minibatch indices included);
* **parts**: the default backend's minibatch gradients alone and the learner's
  ``batched_step`` alone, on the same rows (where the time of a batched step goes);
* **loop** (the baseline): today's machinery, :class:`harness.meta.truncation.InnerProblems`
  on the ordinary task of each problem (``build_task``), one problem at a time, both sides, its
  truncation's batches drawn by ``InnerProblems.data`` (timed, as meta-training does it), with
  ``outer_data=inner`` (no extra forward passes beyond one per truncation). The loop runs the
  first ``--loop-problems`` pairs of each group (its rate does not depend on how many).

The learner: ``nominal_mlp`` (its ``batched_step`` in the engine, its ``apply`` in the loop)
when it is registered, else ``adam`` (:class:`BatchedAdam` in the engine, ``adam_residual`` at its
initial theta, Adam plus its learned terms, in the loop); ``--learner`` picks. In one process,
for R rounds in rotating order, every variant of every group runs; ``gc.collect()`` before each
block, outside the clock; medians over rounds. One thread (``--threads``): one core.

The clock is the CPU time of the benchmark's own thread (``time.thread_time``; at one thread all
of torch's work runs on it), so the rates are per CPU-hour and other jobs' load on the machine
does not decide them (it still slows a thread through shared caches and memory bandwidth); the
wall-clock family rates are printed beside them.

The family rate is the harmonic mean over the groups (the rate of a mix with as many
problem-steps in each group); the ratio is the family rate of the faster batched backend over
the loop's. Exit code (``benchmarks/verdict.py``): 0 both targets met, 3 it ran and missed one
(the last line, ``verdict: ...``, says which); a crash is 1 (Python's traceback), bad arguments
2: never a verdict.

Usage::

    python benchmarks/batched_throughput.py [--family mlp_mix] [--arch-seeds 0-7] [--pairs 32]
        [--unroll 20] [--rounds 3] [--loop-problems 2] [--learner nominal_mlp|adam]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from verdict import verdict

from harness.errors import UsageError
from harness.meta.batched import BatchedAdam, ProblemBatch, unroll
from harness.meta.truncation import InnerProblems
from harness.registry import LEARNERS, create_learner
from tasks.families import build_task, sample_group

TARGET_PER_HOUR = 1e7
TARGET_RATIO = 15.0
SIGMA = 0.01
HORIZON = 1000
BATCHED = ("hand", "vmap")
PARTS = ("grad", "learner")


def parse_seeds(text: str) -> list[int]:
    """``0-7`` or ``0,3,5`` -> a list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    return seeds


def learners(name: str) -> tuple[Any, Any, str]:
    """``(batched learner, per-problem learner, description)`` for ``--learner``."""
    if name == "adam":
        return BatchedAdam(), create_learner("adam_residual"), "BatchedAdam vs adam_residual"
    learner = create_learner(name)
    if not hasattr(learner, "batched_step"):
        raise UsageError(f"learner {name} has no batched_step: it cannot run in the engine")
    return learner, learner, f"{name} (batched_step vs apply)"


def timed(block: Callable[[], Any]) -> tuple[float, float]:
    """``(CPU seconds of this thread, wall seconds)`` of one call of ``block``."""
    gc.collect()
    began, wall = time.thread_time(), time.perf_counter()
    block()
    return time.thread_time() - began, time.perf_counter() - wall


class Group:
    """One architecture: its batched variants and its loop, each a timed block."""

    def __init__(self, args: argparse.Namespace, arch_seed: int, batched: Any, single: Any) -> None:
        n = args.pairs
        self.tasks = sample_group(args.family, arch_seed, range(n))
        self.spec = self.tasks[0]
        self.unroll_steps = args.unroll
        seeds = list(range(n))
        # rows 0..N-1 the +eps sides, N..2N-1 the -eps sides of the same problems
        starts = [i * HORIZON // n for i in range(n)]
        self.step = torch.tensor(starts + starts, dtype=torch.long)
        self.horizon = torch.full((2 * n,), HORIZON, dtype=torch.long)
        theta0 = torch.zeros(1) if isinstance(batched, BatchedAdam) else batched.init_theta(0)
        generator = torch.Generator().manual_seed(arch_seed)
        eps = SIGMA * torch.randn(n, theta0.numel(), generator=generator)
        self.theta = torch.cat([theta0 + eps, theta0 - eps])
        self.batched = batched
        self.blocks: dict[str, Callable[[], Any]] = {}
        self.steps_done: dict[str, int] = {}
        backends = ("hand", "vmap") if self.spec.kind == "mlp" else ("vmap",)
        for backend in reversed(backends):  # the default backend last: its parts are timed
            batch = ProblemBatch(self.tasks * 2, seeds * 2, backend=backend)
            w0 = batch.init_params()
            state0 = batched.batched_init(w0)
            self.blocks[backend] = self._batched_block(batch, w0, state0)
            self.steps_done[backend] = 2 * n * args.unroll
        self.num_params = batch.num_params
        self._parts(batch, w0, state0, 2 * n * args.unroll)
        loop = [self._loop_pair(single, i, theta0, eps[i], starts[i]) for i in range(args.loop)]
        self.blocks["loop"] = lambda: [pair() for pair in loop]
        self.steps_done["loop"] = 2 * args.loop * args.unroll

    def _parts(self, batch: ProblemBatch, w0: Any, state0: Any, steps: int) -> None:
        """The default backend's two parts, timed alone: ``grad`` (T minibatch losses and
        gradients, indices included) and ``learner`` (T ``batched_step`` calls)."""
        grad0 = batch.loss_and_grad(w0, self.step)[1]

        def grad_block() -> None:
            indices = batch.batch_indices(self.step, self.unroll_steps)
            for j in range(self.unroll_steps):
                batch.loss_and_grad(w0, self.step, indices=indices[j])

        def learner_block() -> None:
            for _ in range(self.unroll_steps):
                self.batched.batched_step(
                    self.theta, w0, grad0, state0, self.step, self.horizon, batch.segments
                )

        self.blocks["grad"], self.blocks["learner"] = grad_block, learner_block
        self.steps_done["grad"] = self.steps_done["learner"] = steps

    def weight_flops(self) -> float | None:
        """About 6 x batch x (weight elements) flops per MLP problem-step (forward 2, backward
        4); None for conv nets."""
        if self.spec.kind != "mlp":
            return None
        weights = sum(a * b for a, b in self.spec.shapes[::2])
        return 6.0 * self.spec.batch_size * weights

    def _batched_block(self, batch: ProblemBatch, w0: Any, state0: Any) -> Callable[[], Any]:
        def block() -> Any:
            return unroll(
                batch,
                self.batched,
                self.theta,
                w0,
                state0,
                self.step,
                self.horizon,
                self.unroll_steps,
            )

        return block

    def _loop_pair(
        self, single: Any, i: int, theta0: torch.Tensor, eps: torch.Tensor, start: int
    ) -> Callable[[], Any]:
        task = build_task(self.tasks[i])
        inner = InnerProblems(
            task,
            single,
            num_problems=1,
            horizon=HORIZON,
            outer_batches=1,
            objective="train",
            seed=i,
            outer_data="inner",
        )
        state = inner.fresh_state(0, 0, step=start)
        single_theta = single.init_theta(0)
        # with --learner adam the loop's adam_residual has a theta of its own size: perturb
        # its first len(eps) entries
        perturb = torch.zeros_like(single_theta)
        k = min(perturb.numel(), eps.numel())
        perturb[:k] = eps[:k]

        def pair() -> None:
            data = inner.data(0, state, self.unroll_steps)
            for sign in (1.0, -1.0):
                inner.unroll(single_theta + sign * perturb, state, data, grad_mode="none")

        return pair


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    name = args.learner or ("nominal_mlp" if "nominal_mlp" in LEARNERS.names() else "adam")
    batched, single, learner_text = learners(name)
    groups = [Group(args, seed, batched, single) for seed in parse_seeds(args.arch_seeds)]
    print(
        f"{args.family}, arch seeds {args.arch_seeds}: {args.pairs} antithetic pairs per group "
        f"({2 * args.pairs} rows), T={args.unroll}, {args.rounds} rounds, "
        f"threads={torch.get_num_threads()}, learner {learner_text}",
        flush=True,
    )
    for group in groups:  # warm-up (compilation, caches), untimed
        for block in group.blocks.values():
            block()
    seconds: dict[tuple[int, str], list[float]] = {}
    walls: dict[tuple[int, str], list[float]] = {}
    for round_index in range(args.rounds):
        for g, group in enumerate(groups):
            names = list(group.blocks)
            shift = round_index % len(names)
            for variant in names[shift:] + names[:shift]:
                cpu, wall = timed(group.blocks[variant])
                seconds.setdefault((g, variant), []).append(cpu)
                walls.setdefault((g, variant), []).append(wall)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rates: dict[str, list[float]] = {}
    wall_rates: dict[str, list[float]] = {}
    parts: list[str] = []
    header = f"{'arch':>4} {'group (kind, image, hidden, act, batch)':<44} {'N':>6}"
    print(f"{header} {'hand/s':>8} {'vmap/s':>8} {'loop/s':>7} {'hand/vmap':>9} {'best/loop':>9}")
    for g, group in enumerate(groups):
        row = {v: group.steps_done[v] / statistics.median(seconds[(g, v)]) for v in group.blocks}
        for v, rate in row.items():
            rates.setdefault(v, []).append(rate)
            wall = group.steps_done[v] / statistics.median(walls[(g, v)])
            wall_rates.setdefault(v, []).append(wall)
        best = max(row.get("hand", 0.0), row["vmap"])
        flops = group.weight_flops()
        gflops = f"{row['grad'] * flops / 1e9:.1f}" if flops else "-"
        parts.append(
            f"{parse_seeds(args.arch_seeds)[g]:>4} {row['grad']:>8.0f} {gflops:>12} "
            f"{1e9 / (row['learner'] * group.num_params):>17.1f} "
            f"{row[BATCHED[0] if 'hand' in row else 'vmap'] / row['learner']:>14.0%}"
        )
        hand_vmap = f"{row['hand'] / row['vmap']:.2f}x" if "hand" in row else "-"
        print(
            f"{parse_seeds(args.arch_seeds)[g]:>4} {group.spec.group_key!s:<44} "
            f"{group.num_params:>6} {row.get('hand', float('nan')):>8.0f} {row['vmap']:>8.0f} "
            f"{row['loop']:>7.0f} {hand_vmap:>9} {best / row['loop']:>8.1f}x"
        )
    print(
        "the default backend's parts alone: minibatch gradients (problem-steps/s, GFLOP/s of "
        "its weight products) and the learner (ns per parameter; its share of a step)"
    )
    columns = ("grad/s", 8), ("grad GFLOP/s", 12), ("learner ns/param", 17), ("learner share", 14)
    print(f"{'arch':>4} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for line in parts:
        print(line)
    family = {v: len(r) / sum(1.0 / x for x in r) for v, r in rates.items() if v not in PARTS}
    wall_family = {
        v: len(r) / sum(1.0 / x for x in r) for v, r in wall_rates.items() if v not in PARTS
    }
    kept = max((v for v in family if v in BATCHED), key=lambda v: family[v])
    per_hour = family[kept] * 3600
    ratio = family[kept] / family["loop"]
    print(
        "family rate (harmonic mean over groups), problem-steps per CPU-second: "
        + ", ".join(f"{v} {r:.0f}" for v, r in family.items())
    )
    print(
        "the same per wall-clock second (load on the machine lowers these): "
        + ", ".join(f"{v} {r:.0f}" for v, r in wall_family.items())
    )
    grad_alone = len(rates["grad"]) / sum(1.0 / x for x in rates["grad"])
    print(
        f"grad alone (the bound with a free learner): {grad_alone:.0f} problem-steps per "
        f"CPU-second, {grad_alone / family['loop']:.1f}x the loop"
    )
    if "hand" in family:
        print(f"hand-batched over vmap: {family['hand'] / family['vmap']:.2f}x; kept: {kept}")
    met_rate = per_hour >= args.target_per_hour
    met_ratio = ratio >= args.target_ratio
    print(
        f"batched ({kept}): {per_hour:.3g} problem-steps per CPU-hour against the target of "
        f"{args.target_per_hour:.3g}: {'met' if met_rate else 'NOT met'}"
    )
    print(
        f"batched over the per-problem loop: {ratio:.1f}x against the target of "
        f"{args.target_ratio:g}x: {'met' if met_ratio else 'NOT met'}"
    )
    return verdict(
        met_rate and met_ratio,
        f"{per_hour:.3g} problem-steps per CPU-hour (target {args.target_per_hour:.3g}), "
        f"{ratio:.1f}x the per-problem loop (target {args.target_ratio:g}x)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="mlp_mix")
    parser.add_argument("--arch-seeds", default="0-7", help="e.g. 0-7 or 1,3,4")
    parser.add_argument("--pairs", type=int, default=32, help="antithetic pairs per group (N)")
    parser.add_argument("--unroll", type=int, default=20, help="inner steps per block (T)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-problems", dest="loop", type=int, default=2)
    parser.add_argument("--learner", default=None, help="nominal_mlp (default if registered)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target-per-hour", type=float, default=TARGET_PER_HOUR)
    parser.add_argument("--target-ratio", type=float, default=TARGET_RATIO)
    args = parser.parse_args(argv)
    if args.loop > args.pairs or min(args.pairs, args.unroll, args.rounds, args.loop) < 1:
        parser.error("need 1 <= --loop-problems <= --pairs and positive --unroll and --rounds")
    try:
        return run(args)
    except UsageError as exc:  # bad arguments: 2, never a verdict
        print(f"batched_throughput: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
