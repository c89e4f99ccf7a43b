"""What a charlm_transformer step and its whole-split evaluations cost, side by side with a
mnist5k_cnn16 step (issue 25: pick the LM's size so a 2,000-step run stays practical).

One thread. In one process, for R rounds, in alternating order: S Adam training steps of
``charlm_transformer`` (at the given ``--width``/``--layers``/``--context``/``--batch``), S of
``mnist5k_cnn16`` (the paper's task), and one whole-split evaluation of the LM's train, valid
and test splits. Each round gives the LM step's cost in cnn16 steps and each evaluation's cost
in LM steps; the medians are printed with the per-step seconds (wall-clock and the process's
CPU time, which a loaded machine inflates less), and the cost of a suite run (2,000 steps, the
three splits every ``--eval-every`` steps) and of a tuning trial (2,000 steps, the objective's
split every 200 steps, times ``--tuning-seeds``; and the same trial evaluating only at steps 0
and 2,000, as a campaign without pruning does for a new study) in LM steps and in minutes at the
measured rates (evaluations costed at the training step's rate; since 2026-12-06 the runner's
warm-up evaluates nothing and a trial reuses the step-0 evaluation of the study's first trial on
each seed, :mod:`harness.evaluation_memo`, so a suite run and a tuning trial are counted without
both; a study's first trial pays one more evaluation per seed). Batches are fetched before the clock
starts; the unit is the runner's timed step (:func:`harness.runner.make_train_step`).

    python benchmarks/charlm_cost.py [--rounds 5] [--steps 20] [--width 64] [--layers 2]
        [--context 64] [--batch 32] [--eval-every 200] [--tuning-seeds 2]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from itertools import islice

import torch

from harness.registry import create_optimizer, create_task
from harness.runner import make_train_step


def timed_steps(task, steps: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per Adam training step of ``task`` over ``steps``
    steps (after one warm-up)."""
    optimizer = create_optimizer("adam", lr=1e-3)
    params = task.init_params(0)
    state = optimizer.init(params)
    step = make_train_step(task, optimizer)
    batches = list(islice(task.batches("train", 0), steps + 1))
    params, state, _ = step(params, state, batches[0])
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches[1:]:
        params, state, _ = step(params, state, batch)
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--tuning-seeds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lm = create_task(
        "charlm_transformer",
        width=args.width,
        layers=args.layers,
        context=args.context,
        batch_size=args.batch,
    )
    cnn = create_task("mnist5k_cnn16")
    params = lm.init_params(0)
    print(
        f"charlm_transformer width {args.width}, {args.layers} layers, context {args.context}, "
        f"batch {args.batch}: {sum(p.numel() for p in params):,} parameters; one thread"
    )
    lm_steps, lm_cpu, ratios = [], [], []
    evals: dict[str, list[float]] = {s: [] for s in ("train", "valid", "test")}
    for r in range(args.rounds):
        order = (lm, cnn) if r % 2 == 0 else (cnn, lm)
        measured = {task.name: timed_steps(task, args.steps) for task in order}
        seconds = {name: wall for name, (wall, _) in measured.items()}
        lm_steps.append(seconds[lm.name])
        lm_cpu.append(measured[lm.name][1])
        ratios.append(seconds[lm.name] / seconds[cnn.name])
        for split in evals:
            gc.collect()
            started = time.perf_counter()
            lm.evaluate(params, split)
            evals[split].append((time.perf_counter() - started) / seconds[lm.name])
        print(
            f"round {r + 1}: LM step {seconds[lm.name] * 1e3:.1f} ms ({lm_cpu[-1] * 1e3:.1f} ms "
            f"CPU), cnn16 step "
            f"{seconds[cnn.name] * 1e3:.1f} ms, ratio {ratios[-1]:.2f}; evaluations in LM "
            f"steps: " + ", ".join(f"{s} {v[-1]:.1f}" for s, v in evals.items()),
            flush=True,
        )
    step, cpu = statistics.median(lm_steps), statistics.median(lm_cpu)
    cost = {s: statistics.median(v) for s, v in evals.items()}
    n_evals = 2000 // args.eval_every  # step 0's is reused from the seed's first run
    run = 2000 + n_evals * sum(cost.values())
    trial = {
        split: args.tuning_seeds * (2000 + (2000 // 200) * cost[split])
        for split in ("train", "valid")
    }
    final_only = {split: args.tuning_seeds * (2000 + cost[split]) for split in trial}
    print(
        f"median over {args.rounds} rounds: LM step {step * 1e3:.1f} ms ({cpu * 1e3:.1f} ms of "
        f"process CPU time) = "
        f"{statistics.median(ratios):.2f} mnist5k_cnn16 steps; one whole-split evaluation = "
        + ", ".join(f"{s} {c:.1f}" for s, c in cost.items())
        + " LM steps"
    )
    print(
        f"a suite run (2,000 steps, train+valid+test every {args.eval_every}): {run:.0f} LM "
        f"steps = {run * step / 60:.1f} min wall, {run * cpu / 60:.1f} CPU-min; a tuning trial "
        f"({args.tuning_seeds} seeds): train_loss {trial['train']:.0f} steps = "
        f"{trial['train'] * step / 60:.1f} min wall, {trial['train'] * cpu / 60:.1f} CPU-min; "
        f"valid_loss {trial['valid']:.0f} steps = {trial['valid'] * step / 60:.1f} min wall, "
        f"{trial['valid'] * cpu / 60:.1f} CPU-min"
    )
    print(
        "a tuning trial evaluating only at steps 0 and 2,000 (a campaign's new studies): "
        + "; ".join(
            f"{split}_loss {final_only[split]:.0f} steps = {final_only[split] * step / 60:.1f} "
            f"min wall, {final_only[split] * cpu / 60:.1f} CPU-min "
            f"({final_only[split] / trial[split]:.2f}x the trial above)"
            for split in ("train", "valid")
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
