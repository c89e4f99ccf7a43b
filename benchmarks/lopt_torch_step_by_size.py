"""What does a learned-optimizer step cost in a plain PyTorch loop, by model size?

For MLPs 64 -> W -> 10 on scikit-learn's 8x8 digits (batch 64; W from ``--widths``, the
digits_mlp task's model at W = 64), in one process and one thread, R rounds of S training steps
each, alternating: ``torch.optim.Adam`` (lr 1e-3) and :class:`optimizers.torch_optim.LOpt`
(``--checkpoint``, a shipped name or a ``lopt meta-train`` file), each from the same initial
weights over the same batches (prepared before the clock starts). A step is what a user's loop
does: forward, loss, ``backward()``, ``opt.step()``, ``opt.zero_grad()``; its time is
``time.perf_counter()`` around the S steps, ``gc.collect()`` before each block, outside the
clock. Per width it prints the parameter count, the median ms per step of each and the median
over rounds of the ratio LOpt/Adam.

The learned optimizer's update costs a fixed amount per parameter (its features and MLP run on
every weight), the model's forward and backward about batch x parameters for an MLP: both grow
with W, so the ratio says what a learned step adds to a small dense model. No target: exit 0.

Usage::

    python benchmarks/lopt_torch_step_by_size.py [--checkpoint adam_residual_mnist5k_train]
        [--widths 64,256,1024] [--steps 30] [--rounds 20]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch
from torch import nn

from optimizers.torch_optim import LOpt


def digits_batches(steps: int, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches of the 8x8 digits (scaled to [0, 1]), in a fixed random order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    return [
        (x[index], y[index])
        for index in (torch.randint(0, len(y), (batch,), generator=generator) for _ in range(steps))
    ]


def mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def timed_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
) -> float:
    """Seconds of ``len(batches)`` training steps (forward, backward, step, zero_grad)."""
    gc.collect()
    start = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="adam_residual_mnist5k_train")
    parser.add_argument("--widths", default="64,256,1024")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batches = digits_batches(args.steps)
    loss_fn = nn.CrossEntropyLoss()
    print(
        f"LOpt({args.checkpoint}) against torch.optim.Adam in a plain loop, digits, batch 64, "
        f"one thread, {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'model':<14} {'params':>8} {'adam ms':>8} {'lopt ms':>8} {'ratio':>6} (min-max)")
    for width in (int(w) for w in args.widths.split(",")):
        models = {"adam": mlp(width), "lopt": mlp(width)}
        opts = {
            "adam": torch.optim.Adam(models["adam"].parameters(), lr=1e-3),
            "lopt": LOpt(models["lopt"].parameters(), args.checkpoint),
        }

        def block(name: str, models=models, opts=opts) -> float:
            return timed_steps(models[name], opts[name], batches, loss_fn)

        block("adam")  # warm-up, untimed
        block("lopt")
        times: dict[str, list[float]] = {"adam": [], "lopt": []}
        ratios = []
        for round_index in range(args.rounds):
            order = ("adam", "lopt") if round_index % 2 == 0 else ("lopt", "adam")
            measured = {name: block(name) for name in order}
            for name, seconds in measured.items():
                times[name].append(seconds / args.steps * 1e3)
            ratios.append(measured["lopt"] / measured["adam"])
        params = sum(p.numel() for p in models["adam"].parameters())
        print(
            f"{f'MLP 64-{width}-10':<14} {params:>8,} {statistics.median(times['adam']):>8.3f} "
            f"{statistics.median(times['lopt']):>8.3f} {statistics.median(ratios):>6.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
