"""What one tuning trial costs at the paper's protocol (issue 12: plan runs before starting).

Trains Adam (lr 3e-3) on a task for ``--steps`` steps, one thread, five times: with
whole-split evaluations of train, valid and test every 100 steps (the suite's runs), of the
train split only every 100 steps, of the valid split every ``steps // 10`` steps (the tuning
default), and of the train and of the valid split at steps 0 and ``steps`` only (what a
campaign's new studies do with pruning off, ``python -m harness.tuning.campaign``), and prints
the wall and timed seconds of each and the final-only runs' wall-clock over the
``steps // 10`` ones' (same split). The runner's untimed warm-up evaluates nothing. Each way
pays its own step-0 evaluation (the runner's memo of them is emptied before each), as a study's
first trial on a seed does; later trials on that seed reuse it (:mod:`harness.evaluation_memo`).

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
    cases = (
        (("train", "valid", "test"), 100),
        (("train",), 100),
        (("valid",), max(1, args.steps // 10)),
        (("train",), max(1, args.steps // 10)),
        (("train",), args.steps),
        (("valid",), args.steps),
    )
    walls: dict[tuple[str, int], float] = {}
    for splits, every in cases:
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
        walls["+".join(splits), every] = wall
        print(
            f"{args.task}, {args.steps} steps, evaluating {'+'.join(splits)} every {every} "
            f"steps: {wall:.1f} s wall, {result.train_seconds:.1f} s timed"
        )
    tenth = max(1, args.steps // 10)
    print(
        "evaluating at the end only, over every steps // 10: "
        + ", ".join(
            f"{split} {walls[split, args.steps] / walls[split, tenth]:.2f}x"
            for split in ("train", "valid")
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
