"""What does a meta-gradient cost? One outer step against the plain passes it contains.

Two measurements, both printed as ratios measured in one run.

**Overhead** (default). In one process, interleaved, R rounds of:

* ``meta``: one outer step of the merged estimator, :meth:`MetaTrainer.step` on a fixed-length
  schedule (B problems, unroll T, K outer batches): for each problem the +eps and -eps unrolls
  with their graphs (second-order by default), the backward passes, the ES and rp samples, the
  merge, the clip and the Adam step on theta, and drawing the truncation's batches;
* ``plain``: the passes that step contains, without meta-gradients: for each problem, the same
  two unrolls (``grad_mode="none"``: every inner step is the gradient of the minibatch loss plus
  the learned optimizer's update under ``no_grad``, exactly as the harness runner trains) and
  the outer-loss evaluation after every inner step (K forward passes under ``no_grad``). The
  batches are drawn before the clock starts.

so ``2 * B * T`` inner training steps plus ``2 * B * T * K`` outer forward passes on each side.
The verdict is the median over rounds of meta/plain; the limit is 3 (``--limit``). Run it for
K = 1 and K = 5 (``--outer-batches``).

**Parallelism** (``--parallel``): seconds per outer step of the whole meta-training loop for
``parallel=loop`` (one process, torch's threads), ``vmap`` (one process, ``torch.func.vmap``
over the problems) and ``processes`` (``--workers`` torchrun ranks, one thread each), each from
``meta_train`` with the same configuration, read from the ``seconds`` rows of its log (the
first ``--skip`` steps, warm-up, left out; process start-up is not in them). Throughput is
inner steps (both unrolls of every problem) per second.

Usage::

    python benchmarks/meta_step_overhead.py [--task mnist5k_cnn16] [--outer-batches 1]
        [--problems 4] [--unroll 10] [--rounds 5] [--threads N] [--first-order]
    python benchmarks/meta_step_overhead.py --parallel [--problems 8] [--unroll 10]
        [--steps 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from verdict import verdict

from harness.meta.command import meta_train
from harness.meta.trainer import LOG_FILE, build_trainer
from harness.settings.meta import coerce_config

LIMIT = 3.0


def overhead(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = coerce_config(
        task=args.task,
        parallel="loop",
        problems=args.problems,
        schedule="constant",
        unroll_length=args.unroll,
        outer_batches=args.outer_batches,
        first_order=args.first_order,
        horizon=args.horizon,
        out=tempfile.mkdtemp(prefix="meta-overhead-"),
        progress=False,
    )
    trainer = build_trainer(cfg)
    problems = trainer.problems

    def plain() -> float:
        lengths = {
            i: min(cfg.unroll_length, problems.length_cap(s)) for i, s in trainer.states.items()
        }
        datas = {i: problems.data(i, s, lengths[i]) for i, s in trainer.states.items()}
        theta = trainer.theta.detach()
        gc.collect()
        start = time.perf_counter()
        for i, state in trainer.states.items():
            for _sign in (1.0, -1.0):
                problems.unroll(theta, state, datas[i], grad_mode="none")
        return time.perf_counter() - start

    def meta() -> float:
        gc.collect()
        start = time.perf_counter()
        trainer.step()
        return time.perf_counter() - start

    meta()  # warm-up (allocator, kernels), untimed
    plain()
    ratios, metas, plains = [], [], []
    for round_index in range(args.rounds):
        if round_index % 2 == 0:
            p, m = plain(), meta()
        else:
            m, p = meta(), plain()
        ratios.append(m / p)
        metas.append(m)
        plains.append(p)
        print(
            f"round {round_index + 1}: meta {m:.3f} s, plain {p:.3f} s, ratio {m / p:.2f}",
            flush=True,
        )
    median = statistics.median(ratios)
    order = "first" if cfg.first_order else "second"
    print(
        f"\n{cfg.task}: B={cfg.problems} T={cfg.unroll_length} K={cfg.outer_batches} "
        f"{order}-order, threads={torch.get_num_threads()}: "
        f"median meta {statistics.median(metas):.3f} s, "
        f"plain {statistics.median(plains):.3f} s; ratio median {median:.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); limit {args.limit}"
    )
    return verdict(median <= args.limit, f"median meta/plain {median:.2f} against {args.limit}")


def parallelism(args: argparse.Namespace) -> int:
    results = {}
    modes = [("loop", 1, None), ("vmap", 1, None), ("processes", args.workers, 1)]
    for mode, workers, threads in modes:
        out = Path(tempfile.mkdtemp(prefix=f"meta-{mode}-"))
        start = time.perf_counter()
        meta_train(
            task=args.task,
            parallel=mode,
            workers=workers,
            threads=threads,
            problems=args.problems,
            schedule="constant",
            unroll_length=args.unroll,
            outer_batches=args.outer_batches,
            outer_steps=args.steps,
            checkpoint_every=args.steps,
            out=str(out),
            resume=False,
            progress=False,
        )
        total = time.perf_counter() - start
        log = pd.read_csv(out / LOG_FILE)
        seconds = log[(log.metric == "seconds") & (log.outer_step > args.skip)].value
        per_step = float(seconds.median())
        inner_steps = 2 * args.problems * args.unroll
        results[mode] = per_step
        print(
            f"{mode:<9} workers={workers} threads={threads or torch.get_num_threads()}: "
            f"{per_step:.3f} s/outer step (median of {len(seconds)}), "
            f"{inner_steps / per_step:.1f} inner steps/s; whole command {total:.1f} s",
            flush=True,
        )
    best = min(results, key=results.get)  # type: ignore[arg-type]
    print(
        "\nrelative to loop: "
        + ", ".join(f"{m} {results['loop'] / s:.2f}x" for m, s in results.items())
        + f"; fastest: {best}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--unroll", type=int, default=10)
    parser.add_argument("--outer-batches", type=int, default=1)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--limit", type=float, default=LIMIT)
    parser.add_argument("--parallel", action="store_true", help="compare loop, vmap, processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    return parallelism(args) if args.parallel else overhead(args)


if __name__ == "__main__":
    sys.exit(main())
