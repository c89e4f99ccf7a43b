"""Shipped learned-optimizer checkpoints are served by name (optimizers/pretrained.py)."""

from __future__ import annotations

import json

import torch

from harness.meta.checkpoint import save_lopt_checkpoint
from harness.registry import OPTIMIZERS, Registry
from optimizers.learned import LearnedOptimizer, LOptArchitecture, init_theta
from optimizers.pretrained import PRETRAINED_DIR, register_pretrained


def test_a_checkpoint_in_the_folder_becomes_an_optimizer_with_its_provenance(tmp_path) -> None:
    architecture = LOptArchitecture()
    theta = init_theta(architecture, seed=7)
    save_lopt_checkpoint(tmp_path / "lopt_toy.pt", theta, architecture, {"task": "quadratic"})
    (tmp_path / "lopt_toy.json").write_text(
        json.dumps({"description": "A toy optimizer.", "command": "lopt meta-train ..."})
    )
    registry = Registry("optimizer", "lopt_harness.test_group", "optimizers")
    assert register_pretrained(tmp_path, registry) == ["lopt_toy"]
    entry = registry.get("lopt_toy")
    assert entry.description == "A toy optimizer."
    optimizer = entry.factory()
    assert isinstance(optimizer, LearnedOptimizer) and optimizer.hparams == {}
    assert torch.equal(optimizer.theta, theta)
    assert optimizer.meta_training == {"task": "quadratic"}
    params = (torch.ones(3, 2), torch.zeros(2))
    grads = (torch.full((3, 2), 0.5), torch.ones(2))
    ours, _ = optimizer.update(grads, optimizer.init(params), params)
    reference = LearnedOptimizer.from_theta(theta, architecture)
    theirs, _ = reference.update(grads, reference.init(params), params)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_every_shipped_checkpoint_is_registered() -> None:
    shipped = sorted(path.stem for path in PRETRAINED_DIR.glob("*.pt"))
    for name in shipped:
        assert OPTIMIZERS.get(name).factory.pretrained_checkpoint.endswith(f"{name}.pt")
