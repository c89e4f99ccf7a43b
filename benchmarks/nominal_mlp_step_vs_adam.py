"""Is a ``nominal_mlp`` training step at most 1.10x an Adam step on mnist5k_cnn16, and at most
1.3x on digits_mlp?

The unit is the whole training step as the harness runner times it
(:func:`harness.runner.make_train_step`: the gradient of the minibatch loss, then the optimizer
update under ``no_grad``). For each task, in one process, for R rounds, the project's ``adam``
and ``lopt`` serving an untrained ``nominal_mlp`` (its cost does not depend on theta's values)
run S steps each from the same initial parameters over the same batches (fetched before the
clock starts), in alternating order; each round gives the ratio nominal/adam of the two
blocks' times, and the task's figure is the median ratio. The clock is the thread's CPU time
(``time.thread_time``; at one thread all of torch's work runs on it), which on a machine shared
with other jobs is far steadier than wall-clock time; on an idle machine the two agree. The
wall-clock ratio is printed beside it. ``gc.collect()`` runs
before each block, outside the clock. The first block of each (untimed) compiles the fused
update; its seconds are printed. With ``--eager`` the eager update is measured instead.

Exit status (``benchmarks/verdict.py``): 0 both limits met, 3 a limit missed (the last line says
``verdict: MISSED``), anything else a failure (1 a crash, 2 bad arguments or the fused path
unavailable, so that nothing was measured of it).

Usage::

    python benchmarks/nominal_mlp_step_vs_adam.py [--threads 1] [--steps 30] [--rounds 15]
        [--eager] [--tasks mnist5k_cnn16,digits_mlp]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from itertools import islice

import torch
from verdict import verdict

from harness.registry import create_learner, create_optimizer, create_task
from harness.runner import make_train_step
from optimizers import nominal_kernel
from optimizers.learned import LearnedOptimizer

LIMITS = {"mnist5k_cnn16": 1.10, "digits_mlp": 1.30}


def measure(
    task_name: str, steps: int, rounds: int, eager: bool, hidden: int, layers: int
) -> tuple[float, str]:
    """``(median CPU-time ratio nominal/adam, a line describing it)`` for one task."""
    task = create_task(task_name)
    learner = create_learner("nominal_mlp", compile=not eager, hidden=hidden, layers=layers)
    lopt = LearnedOptimizer.from_theta(learner.init_theta(0), learner)
    optimizers = {"adam": create_optimizer("adam"), "nominal": lopt}
    train_steps = {name: make_train_step(task, opt) for name, opt in optimizers.items()}
    params0 = task.init_params(0)
    batches = list(islice(task.batches("train", 0), steps))
    states = {name: (params0, opt.init(params0)) for name, opt in optimizers.items()}

    def block(name: str) -> tuple[float, float]:
        """``(CPU seconds, wall seconds)`` of S steps."""
        params, state = states[name]
        step = train_steps[name]
        gc.collect()
        start, wall = time.thread_time(), time.perf_counter()
        for batch in batches:
            params, state, _loss = step(params, state, batch)
        elapsed = time.thread_time() - start, time.perf_counter() - wall
        states[name] = (params, state)
        return elapsed

    block("adam")  # warm-up, untimed
    first = block("nominal")[1]  # compiles the fused update (once per process and dtype)
    if not eager and not any(v is not None for v in nominal_kernel._COMPILED.values()):
        raise RuntimeError("the fused update could not be compiled here: nothing to measure")
    ratios, wall_ratios, times = [], [], {"adam": [], "nominal": []}
    for round_index in range(rounds):
        order = ("adam", "nominal") if round_index % 2 == 0 else ("nominal", "adam")
        measured = {name: block(name) for name in order}
        for name, (seconds, _) in measured.items():
            times[name].append(seconds / steps * 1e3)
        ratios.append(measured["nominal"][0] / measured["adam"][0])
        wall_ratios.append(measured["nominal"][1] / measured["adam"][1])
    median = statistics.median(ratios)
    n = sum(p.numel() for p in params0)
    line = (
        f"{task_name} ({n} parameters), nominal_mlp {'eager' if eager else 'fused'} "
        f"(hidden {learner.settings.hidden}, layers {learner.settings.layers}), "
        f"first block {first:.1f} s; {rounds} rounds x {steps} steps: "
        f"CPU adam {statistics.median(times['adam']):.3f} ms/step, "
        f"nominal {statistics.median(times['nominal']):.3f} ms/step; ratio median {median:.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}; wall-clock median "
        f"{statistics.median(wall_ratios):.3f}); limit {LIMITS.get(task_name, 'none')}"
    )
    return median, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--eager", action="store_true", help="measure the eager update")
    parser.add_argument("--tasks", default=",".join(LIMITS))
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    missed = []
    for task_name in args.tasks.split(","):
        ratio, line = measure(
            task_name, args.steps, args.rounds, args.eager, args.hidden, args.layers
        )
        print(line, flush=True)
        limit = LIMITS.get(task_name)
        if limit is not None and ratio > limit:
            missed.append(f"{task_name} {ratio:.3f} > {limit}")
    limits = ", ".join(f"{name} <= {limit}" for name, limit in LIMITS.items())
    what = "; ".join(missed) if missed else limits
    return verdict(not missed, f"{what} (threads={torch.get_num_threads()})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:  # a crash must not read as a missed target
        traceback.print_exc()
        sys.exit(1)
