"""How does a family meta-training run's theta do on its held-out set against Adam?

Reads a run folder (``config.json`` and ``lopt.safetensors`` of ``lopt meta-train family=...``) and
scores on the run's own held-out set (:class:`harness.meta.family.heldout.HeldOutSet`: the same
tasks, initialisations and horizons the run's ``heldout_*`` rows use), one thread:

* the learner at its initial theta (for ``nominal_mlp``: Adam at ``lr0``);
* the run's theta (``lopt.safetensors``);
* batched Adam (the engine's ``BatchedAdam``) at each rate of ``--lrs``: a tuned constant-rate
  baseline on the same set.

Prints one line per optimizer: ``heldout_loss`` (mean over tasks of the run's mean log
minibatch loss), ``heldout_final_train`` and ``heldout_final_valid`` (mean log whole-split loss
at the end), and the CPU seconds it took. Exit 0; anything else: a crash.

Usage::

    python benchmarks/family_heldout_vs_adam.py outputs/meta/family_mlp_mix_pes
        [--lrs 0.001,0.003,0.01,0.03]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from harness.meta.batched import BatchedAdam
from harness.meta.family.trainer import FamilyTrainer
from harness.meta.truncation import STREAM_THETA, derive_seed
from harness.settings.family import coerce_family_config
from optimizers.checkpoint import load_lopt_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--lrs", default="0.001,0.003,0.01,0.03")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = json.loads((args.run / "config.json").read_text())
    cfg = coerce_family_config(data, parallel="single", out=str(args.run), progress=False)
    trainer = FamilyTrainer(cfg)  # builds nothing but the learner and the held-out set
    held_out = trainer.heldout_set
    loaded = load_lopt_checkpoint(args.run / "lopt.safetensors")
    step = loaded.meta_training.get("outer_step", "?")
    candidates = [
        (
            f"{cfg.learner} at its initial theta",
            trainer.learner,
            trainer.learner.init_theta(derive_seed(cfg.seed, STREAM_THETA)),
        ),
        (
            f"{cfg.learner} after {step} outer steps (lopt.safetensors)",
            loaded.learner,
            loaded.theta,
        ),
    ]
    for lr in (float(x) for x in args.lrs.split(",")):
        candidates.append((f"Adam lr={lr:g}", BatchedAdam(lr=lr), torch.zeros(1)))
    print(f"held-out set: {held_out.count} tasks of {cfg.family} (seed {cfg.seed})")
    for name, learner, theta in candidates:
        start = time.process_time()
        values = held_out.evaluate(learner, theta.float())
        cpu = time.process_time() - start
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(f"{name:45s} {shown} ({cpu:.0f} CPU-s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
