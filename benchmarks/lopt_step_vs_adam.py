"""Is a learned-optimizer training step at most 1.2x an Adam step? (mnist5k_cnn16)

The unit is the whole training step as the harness runner times it
(:func:`harness.runner.make_train_step`: the gradient of the minibatch loss, then the optimizer
update under ``no_grad``). In one process, for R rounds, both optimizers run S steps each from
the same initial parameters over the same batches (fetched before the clock starts), in
alternating order; each round gives the ratio lopt/adam of the two blocks' wall-clock times.
The verdict is the median ratio; the limit is 1.2 (``--limit``). ``gc.collect()`` runs before
each block, outside the clock.

The learned optimizer is ``lopt`` with ``--checkpoint``, or an untrained learner of the family
``--learner`` (default ``mlp``, the paper's, with ``--hidden``; ``adam_residual`` is Adam with a
learned schedule and correction): its cost does not depend on the values of theta, only on the
architecture.

Usage::

    python benchmarks/lopt_step_vs_adam.py [--threads N] [--steps 30] [--rounds 15]
        [--checkpoint PATH | --learner mlp|adam_residual] [--task mnist5k_cnn16]
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

from harness.registry import create_learner, create_optimizer, create_task
from harness.runner import make_train_step
from optimizers.learned import LearnedOptimizer

LIMIT = 1.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--learner", default="mlp", help="family of an untrained learner")
    parser.add_argument("--hidden", default="32,32", help="hidden sizes of an untrained lopt")
    parser.add_argument("--second-moments", action="store_true")
    parser.add_argument("--limit", type=float, default=LIMIT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = create_task(args.task)
    if args.checkpoint:
        lopt = create_optimizer("lopt", checkpoint=args.checkpoint)
    else:
        settings = {}
        if args.learner == "mlp":
            hidden = [int(h) for h in args.hidden.split(",")]
            settings = {"hidden_sizes": hidden, "second_moments": args.second_moments}
        learner = create_learner(args.learner, **settings)
        lopt = LearnedOptimizer.from_theta(learner.init_theta(0), learner)
    optimizers = {"adam": create_optimizer("adam"), "lopt": lopt}
    steps = {name: make_train_step(task, opt) for name, opt in optimizers.items()}
    params0 = task.init_params(0)
    batches = list(islice(task.batches("train", 0), args.steps))
    states = {name: (params0, opt.init(params0)) for name, opt in optimizers.items()}

    def block(name: str) -> float:
        params, state = states[name]
        step = steps[name]
        gc.collect()
        start = time.perf_counter()
        for batch in batches:
            params, state, _loss = step(params, state, batch)
        elapsed = time.perf_counter() - start
        states[name] = (params, state)
        return elapsed

    block("adam")  # warm-up, untimed
    block("lopt")
    ratios, times = [], {"adam": [], "lopt": []}
    for round_index in range(args.rounds):
        order = ("adam", "lopt") if round_index % 2 == 0 else ("lopt", "adam")
        measured = {name: block(name) for name in order}
        for name, seconds in measured.items():
            times[name].append(seconds / args.steps * 1e3)
        ratios.append(measured["lopt"] / measured["adam"])
    median = statistics.median(ratios)
    n = sum(p.numel() for p in params0)
    print(
        f"{args.task} ({n} parameters), learner {lopt.learner.family}, "
        f"threads={torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.steps} steps: adam {statistics.median(times['adam']):.2f} "
        f"ms/step, lopt {statistics.median(times['lopt']):.2f} ms/step; ratio median "
        f"{median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); limit {args.limit}"
    )
    return verdict(
        median <= args.limit, f"median ratio {median:.3f} against the limit {args.limit}"
    )


if __name__ == "__main__":
    sys.exit(main())
