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


def test_every_shipped_checkpoint_is_registered_from_its_safetensors_file() -> None:
    shipped = sorted(path.stem for path in PRETRAINED_DIR.glob("*.safetensors"))
    assert shipped, "no shipped checkpoint found"
    assert {path.stem for path in PRETRAINED_DIR.glob("*.pt")} <= set(shipped)
    for name in shipped:
        factory = OPTIMIZERS.get(name).factory
        assert factory.pretrained_checkpoint.endswith(f"{name}.safetensors")
        assert factory.provenance["description"] and factory.provenance["command"]


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
    assert not list((tmp_path / "shipped").glob("x.*"))


def test_the_shipped_safetensors_files_hold_the_pt_files_theta_and_record() -> None:
    """Each converted checkpoint has the .pt file's theta, bit for bit, and every other field."""
    from optimizers.checkpoint import LOPT_FORMAT, load_payload

    pairs = sorted(PRETRAINED_DIR.glob("*.pt"))
    assert pairs, "no .pt checkpoint left to compare with"
    for old in pairs:
        a = load_payload(old, LOPT_FORMAT, "checkpoint", remedy="")
        b = load_payload(old.with_suffix(".safetensors"), LOPT_FORMAT, "checkpoint", remedy="")
        assert torch.equal(a.pop("theta"), b.pop("theta")), old.name
        assert json.loads(json.dumps(a)) == b, old.name


@pytest.mark.slow
def test_a_plain_safetensors_reader_loads_the_shipped_files_without_this_package() -> None:
    """safetensors.torch.load_file and the JSON metadata are all a user elsewhere needs (the
    harness, optimizers and tasks packages are made unimportable in that process)."""
    import subprocess
    import sys

    from optimizers.checkpoint import load_lopt_checkpoint

    code = (
        "import sys, json, pathlib\n"
        "for blocked in ('harness', 'optimizers', 'tasks'):\n"
        "    sys.modules[blocked] = None\n"
        "from safetensors import safe_open\n"
        "from safetensors.torch import load_file\n"
        "out = {}\n"
        "for path in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors')):\n"
        "    theta = load_file(str(path))['theta']\n"
        "    with safe_open(str(path), 'pt') as f:\n"
        "        meta = f.metadata()\n"
        "    record = json.loads(meta['record'])\n"
        "    out[path.stem] = [theta.tolist(), meta['format'], record.get('family', 'mlp')]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(PRETRAINED_DIR)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    read = json.loads(result.stdout)
    assert set(read) == {path.stem for path in PRETRAINED_DIR.glob("*.safetensors")}
    for name, (theta, fmt, family) in read.items():
        ours = load_lopt_checkpoint(name)
        assert fmt == "lopt-harness/learned-optimizer" and family == ours.family
        assert torch.equal(torch.tensor(theta, dtype=torch.float32), ours.theta), name


def test_new_checkpoints_are_safetensors_and_old_pt_paths_still_resolve(tmp_path) -> None:
    """save_lopt_checkpoint writes safetensors for a .safetensors path; a .pt path that is gone
    resolves to the .safetensors beside it; conversion never overwrites; a corrupted file is a
    one-line UsageError."""
    from safetensors.torch import load_file

    from optimizers.checkpoint import (
        convert_to_safetensors,
        load_lopt_checkpoint,
        resolve_checkpoint,
    )

    architecture = LOptArchitecture()
    theta = init_theta(architecture, seed=5)
    learner = MLPLearner.of(architecture)
    old = save_lopt_checkpoint(tmp_path / "run" / "lopt.pt", theta, learner, {"task": "q"})
    new = convert_to_safetensors(old)
    assert new == tmp_path / "run" / "lopt.safetensors"
    assert torch.equal(load_file(str(new))["theta"], theta)
    with pytest.raises(UsageError, match="exists already"):
        convert_to_safetensors(old)
    old.unlink()
    assert resolve_checkpoint(old) == new
    assert torch.equal(load_lopt_checkpoint(old).theta, theta)
    saved = save_lopt_checkpoint(tmp_path / "x.safetensors", theta, learner, {"outer_step": 3})
    loaded = load_lopt_checkpoint(saved)
    assert loaded.meta_training == {"outer_step": 3} and loaded.family == "mlp"
    assert torch.equal(loaded.theta, theta)
    saved.write_bytes(saved.read_bytes()[:40])
    with pytest.raises(UsageError, match="cannot be read") as info:
        load_lopt_checkpoint(saved)
    assert "\n" not in str(info.value)
