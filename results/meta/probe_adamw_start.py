"""Probe (issue 11): does adam_residual's start from a tuned AdamW schedule behave as the tuned
adamw_cosine? Trains mnist5k_cnn16 for 2,000 steps on seeds 100-104 (the paper suite's) with (a)
adamw_cosine at the valid-loss study's best hyperparameters and (b) adam_residual (hidden=0) at
its initial theta with lr0 and wd0 from that study and the start schedule fitted to its warm-up
and cosine decay; prints the whole-split final valid and test losses of each, and the test
loss's mean and std.

    OMP_NUM_THREADS=1 python results/meta/probe_adamw_start.py
"""

from __future__ import annotations

from itertools import islice

import torch

from harness.registry import create_learner, create_optimizer, create_task
from harness.runner import make_train_step
from harness.tuning.tuner import tuned_configuration
from optimizers.learned import LearnedOptimizer

torch.set_num_threads(1)
hparams, tags = tuned_configuration(
    task="mnist5k_cnn16",
    optimizer="adamw_cosine",
    objective="valid_loss",
    budget_steps=2000,
    tag="paper",
    storage="sqlite:///results/paper/optuna.db",
)
print(tags["study"], hparams)
learner = create_learner(
    "adam_residual",
    hidden=0,
    horizon=2000,
    lr0=float(hparams["lr"]),
    wd0=float(hparams["weight_decay"]),
    start_warmup=int(hparams["warmup"]),
    start_final_fraction=float(hparams["final_fraction"]),
)
contenders = {
    "adamw_cosine (tuned)": lambda: create_optimizer("adamw_cosine", **hparams),
    "adam_residual start": lambda: LearnedOptimizer.from_theta(learner.init_theta(0), learner),
}
task = create_task("mnist5k_cnn16")
for name, make in contenders.items():
    tests = []
    for seed in range(100, 105):
        optimizer = make()
        params = task.init_params(seed)
        state = optimizer.init(params)
        step = make_train_step(task, optimizer)
        for batch in islice(task.batches("train", seed), 2000):
            params, state = step(params, state, batch)[:2]
        valid, test = task.evaluate(params, "valid"), task.evaluate(params, "test")
        print(f"{name} seed {seed}: valid loss {valid['loss']:.4f}, test loss {test['loss']:.4f}")
        tests.append(test["loss"])
    spread = torch.tensor(tests, dtype=torch.float64)
    print(f"{name}: test loss {spread.mean():.4f} +- {spread.std():.4f} (mean +- std, 5 seeds)")
