"""How far optimizers move a task's weights: each parameter tensor's norm along a run.

Runs each optimizer (``--optimizers NAME[:KEY=VALUE,...]``, e.g. ``adam:lr=0.013618`` or a shipped
learned optimizer) on ``--task`` from the same initialisation and data order (``--seed``) and
prints, every ``--every`` steps, the minibatch loss, the total norm of the parameters and the
test split's loss and accuracy (when the task reports one). A learned optimizer whose test loss
explodes while its accuracy holds is usually inflating the weights (and so the logits) after the
training set is fitted; this shows it beside a hand-designed optimizer.

Example (the measurement quoted in docs/family-evaluation.md)::

    python benchmarks/param_norms.py --task mnist5k_cnn16 --steps 2000 --every 250 \\
        --optimizers adam:lr=0.013618,nominal_mlp_mlp_mix_train

Exit 0 (no target: the numbers are the result); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from harness.errors import UsageError
from harness.registry import create_optimizer, create_task


def parse_optimizers(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``adam:lr=0.01,NAME`` -> ``[("adam", {"lr": 0.01}), ("NAME", {})]``."""
    out = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, rest = item.partition(":")
        hparams: dict[str, Any] = {}
        for pair in (p for p in rest.split(";") if p):
            key, sep, value = pair.partition("=")
            if not sep:
                raise UsageError(f"{item!r}: hyperparameters are NAME:KEY=VALUE;KEY=VALUE")
            hparams[key] = float(value)
        out.append((name, hparams))
    if not out:
        raise UsageError("--optimizers names at least one optimizer")
    return out


def run(task: Any, name: str, hparams: dict[str, Any], steps: int, every: int, seed: int) -> list:
    """Rows ``[optimizer, step, minibatch loss, total parameter norm, test loss, accuracy]``."""
    optimizer = create_optimizer(name, **hparams)
    params = task.init_params(seed)
    state = optimizer.init(params)
    batches = task.batches("train", seed)
    rows = []
    for step in range(1, steps + 1):
        params = tuple(p.detach().requires_grad_(True) for p in params)
        loss = task.loss(params, next(batches))
        grads = torch.autograd.grad(loss, params)
        params, state = optimizer.update(grads, state, tuple(p.detach() for p in params))
        if step % every == 0 or step == steps:
            norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))
            test = task.evaluate(tuple(p.detach() for p in params), "test")
            rows.append(
                [
                    name,
                    step,
                    float(loss.detach()),
                    norm,
                    test.get("loss"),
                    test.get("accuracy", float("nan")),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist5k_cnn16")
    parser.add_argument("--optimizers", default="adam:lr=0.013618,nominal_mlp_mlp_mix_train")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.steps < 1 or args.every < 1:
            raise UsageError("--steps and --every must be at least 1")
        task = create_task(args.task)
        plan = parse_optimizers(args.optimizers)
        rows = [
            row
            for name, hp in plan
            for row in run(task, name, hp, args.steps, args.every, args.seed)
        ]
    except UsageError as exc:
        print(f"param_norms: {exc}", file=sys.stderr)
        return 2
    print(f"{args.task}, seed {args.seed}: the parameters' total norm along each run")
    print(
        f"{'optimizer':<28} {'step':>6} {'batch loss':>11} {'norm':>9} {'test loss':>10} {'acc':>6}"
    )
    for name, step, loss, norm, test_loss, accuracy in rows:
        print(
            f"{name:<28} {step:>6} {loss:>11.3g} {norm:>9.4g} {test_loss:>10.4g} {accuracy:>6.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
