"""Shipped learned-optimizer checkpoints are served by name (optimizers/pretrained.py)."""

from __future__ import annotations

import json

import pytest
import torch

from harness.errors import UsageError
from harness.registry import OPTIMIZERS, Registry
from optimizers.checkpoint import save_lopt_checkpoint
from optimizers.learned import LearnedOptimizer, LOptArchitecture, MLPLearner, init_theta
from optimizers.pretrained import PRETRAINED_DIR, publish, register_pretrained


def test_a_checkpoint_in_the_folder_becomes_an_optimizer_with_its_provenance(tmp_path) -> None:
    architecture = LOptArchitecture()
    theta = init_theta(architecture, seed=7)
    save_lopt_checkpoint(
        tmp_path / "lopt_toy.pt", theta, MLPLearner.of(architecture), {"task": "quadratic"}
    )
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
    assert shipped, "no shipped checkpoint found"
    for name in shipped:
        assert OPTIMIZERS.get(name).factory.pretrained_checkpoint.endswith(f"{name}.pt")


def test_publish_ships_a_checkpoint_with_its_provenance(tmp_path) -> None:
    architecture = LOptArchitecture()
    theta = init_theta(architecture, seed=3)
    meta = {"task": "quadratic", "objective": "valid", "outer_step": 12, "seconds": 3.5}
    source = save_lopt_checkpoint(
        tmp_path / "run" / "lopt.pt", theta, MLPLearner.of(architecture), meta
    )
    shipped = publish(
        source,
        "lopt_toy_valid",
        description="Toy.",
        command="lopt meta-train ...",
        folder=tmp_path / "shipped",
    )
    info = json.loads(shipped.with_suffix(".json").read_text())
    assert info["outer_steps"] == 12 and info["meta_training_seconds"] == 3.5
    assert info["command"] == "lopt meta-train ..." and info["meta_training"] == meta
    registry = Registry("optimizer", "lopt_harness.test_group", "optimizers")
    assert register_pretrained(tmp_path / "shipped", registry) == ["lopt_toy_valid"]
    assert torch.equal(registry.get("lopt_toy_valid").factory().theta, theta)
    assert "curriculum" not in info
    # a run that started at the shipped checkpoint records where it started, and its steps
    later = save_lopt_checkpoint(
        tmp_path / "run2" / "lopt.pt",
        theta,
        MLPLearner.of(architecture),
        {**meta, "outer_step": 5, "init_from": str(source)},
    )
    info = json.loads(
        publish(later, "lopt_toy2", description="", command="", folder=tmp_path / "shipped")
        .with_suffix(".json")
        .read_text()
    )
    assert [(c["checkpoint"], c["outer_steps"]) for c in info["curriculum"]] == [(str(source), 12)]


def test_publish_refuses_a_file_that_is_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError):
        publish(bad, "x", description="", command="", folder=tmp_path / "shipped")
    assert not (tmp_path / "shipped" / "x.pt").exists()
