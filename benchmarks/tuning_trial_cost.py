"""What one tuning trial costs at the paper's protocol (issue 12: plan runs before starting).

Trains Adam (lr 3e-3) on a task for ``--steps`` steps, one thread, seven times: with
whole-split evaluations of train, valid and test every 100 steps (the suite's runs), of the
train split only every 100 steps, of the valid split every ``steps // 10`` steps (the tuning
default), of the train and of the valid split at steps 0 and ``steps`` only (what a
campaign's new studies do with pruning off, ``python -m harness.tuning.campaign``), and the
train split's final-only way once more, as a later trial on the same seed. It prints the wall
and timed seconds of each, the final-only runs' wall-clock over the ``steps // 10`` ones' (same
split) and the later trial's over the first's. The runner's untimed warm-up evaluates nothing.
The first six ways each pay their own step-0 evaluation (the runner's memo of them,
:mod:`harness.evaluation_memo`, is emptied before each), as a study's first trial on a seed
does; the seventh reuses the sixth's, as every later trial on that seed does.

    python benchmarks/tuning_trial_cost.py [--task mnist5k_cnn16] [--steps 2000]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from harness import evaluation_memo, run
from harness.registry import create_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--train-size", type=int, default=None, help="task.train_size")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task_cfg = {"train_size": args.train_size} if args.train_size else {}
    task = create_task(args.task, **task_cfg)
    tenth = max(1, args.steps // 10)
    cases = (  # (splits, eval_every, a later trial on the seed: the step-0 evaluation reused)
        (("train", "valid", "test"), 100, False),
        (("train",), 100, False),
        (("valid",), tenth, False),
        (("valid",), args.steps, False),
        (("train",), tenth, False),
        (("train",), args.steps, False),
        (("train",), args.steps, True),
    )
    walls: dict[tuple[str, int, bool], float] = {}
    for splits, every, later in cases:
        if not later:
            evaluation_memo.forget()
        started = time.perf_counter()
        result = run(
            task,
            "adam",
            {"lr": 3e-3},
            steps=args.steps,
            seed=0,
            eval_every=every,
            eval_splits=splits,
            warmup_steps=1,
            log_every=args.steps,
            task_cfg=task_cfg,
        )
        wall = time.perf_counter() - started
        walls["+".join(splits), every, later] = wall
        print(
            f"{args.task}, {args.steps} steps, evaluating {'+'.join(splits)} every {every} "
            f"steps{' (a later trial: step 0 reused)' if later else ''}: {wall:.1f} s wall, "
            f"{result.train_seconds:.1f} s timed"
        )
    print(
        "evaluating at the end only, over every steps // 10: "
        + ", ".join(
            f"{split} {walls[split, args.steps, False] / walls[split, tenth, False]:.2f}x"
            for split in ("train", "valid")
        )
        + "; a later trial on the seed over the first (train, end only): "
        + f"{walls['train', args.steps, True] / walls['train', args.steps, False]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
