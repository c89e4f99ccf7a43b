"""The one resolve step (harness.resolve): a walk of ``lopt meta-train`` from its settings to its
checkpoints builds the learner once and loads each plugin once (per-problem loop and family
runs); settings are checked for values only and build nothing."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from harness import registry
from harness.cli import main
from harness.registry import LEARNERS, TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


def _equality_module():
    """benchmarks/resolve_equality.py: its tiny commands are this module's too."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "resolve_equality.py"
    spec = importlib.util.spec_from_file_location("resolve_equality_commands", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed(overrides: list[str], *new: str) -> list[str]:
    """``overrides`` with the keys of ``new`` replaced by ``new``."""
    keys = {n.split("=", 1)[0] for n in new}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(new)


_TINY = _equality_module()
#: a save after every outer step (none may build anything), no held-out evaluation
META = changed(_TINY.META, "eval_every=0", "checkpoint_every=1")
FAMILY = changed(_TINY.FAMILY, "eval_every=0", "checkpoint_every=1", "outer_steps=2")


def count_builds(monkeypatch, registry_, name: str) -> list[dict]:
    """Replace the factory registered as ``name`` by one that records each construction."""
    entry = registry_.get(name)
    built: list[dict] = []

    def counting(*args, **kwargs):
        built.append(kwargs)
        return entry.factory(*args, **kwargs)

    monkeypatch.setitem(registry_._entries, name, dataclasses.replace(entry, factory=counting))
    return built


def count_plugin_loads(monkeypatch, tmp_path: Path, module: str) -> list[str]:
    """A plugin module ``module`` in ``tmp_path`` (the working folder), and the list of the
    module names each import through the registry was asked for."""
    (tmp_path / f"{module}.py").write_text('"""A plugin that registers nothing."""\n')
    monkeypatch.chdir(tmp_path)
    loads: list[str] = []
    real = registry.load_plugin_modules

    def counting(modules):
        loads.extend(modules)
        return real(modules)

    monkeypatch.setattr(registry, "load_plugin_modules", counting)
    return loads


def test_a_meta_train_walk_builds_its_learner_and_task_once(tmp_path, monkeypatch):
    learners = count_builds(monkeypatch, LEARNERS, "mlp")
    tasks = count_builds(monkeypatch, TASKS, "quadratic")
    loads = count_plugin_loads(monkeypatch, tmp_path, "resolve_probe_meta")
    out = tmp_path / "run"
    assert main(["meta-train", *META, f"out={out}", "plugins=[resolve_probe_meta]"]) == 0
    assert (out / "lopt_step000003.safetensors").is_file()  # three saves
    assert len(learners) == 1 and len(tasks) == 1
    assert loads == ["resolve_probe_meta"]
    # a resumed run (the same command, later end) builds it once more: one per process
    again = changed(META, "outer_steps=4", f"out={out}", "plugins=[resolve_probe_meta]")
    assert main(["meta-train", *again]) == 0
    assert len(learners) == 2 and loads == ["resolve_probe_meta"]


def test_a_family_walk_builds_its_learner_once(tmp_path, monkeypatch):
    learners = count_builds(monkeypatch, LEARNERS, "nominal_mlp")
    loads = count_plugin_loads(monkeypatch, tmp_path, "resolve_probe_family")
    out = tmp_path / "run"
    assert main(["meta-train", *FAMILY, f"out={out}", "plugins=[resolve_probe_family]"]) == 0
    assert (out / "lopt.safetensors").is_file()
    assert len(learners) == 1
    assert loads == ["resolve_probe_family"]


def test_settings_are_checked_without_building_anything(monkeypatch):
    """coerce_config and coerce_family_config check values only: no registry lookup."""
    from harness.settings.family import coerce_family_config
    from harness.settings.meta import coerce_config

    def refuse(*args, **kwargs):
        raise AssertionError("settings looked a name up")

    monkeypatch.setattr(registry, "create_learner", refuse)
    monkeypatch.setattr(registry, "create_task", refuse)
    monkeypatch.setattr(registry, "load_plugin_modules", refuse)
    monkeypatch.setattr(registry.Registry, "get", refuse)
    cfg = coerce_config(task="nope", learner="nope", plugins=["nope"], init_from="nope.pt")
    assert cfg.task == "nope" and cfg.learner == "nope"
    family = coerce_family_config(family="nope", learner="nope", plugins=["nope"])
    assert family.family == "nope"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"learner": "nope"}, "unknown learner 'nope'"),
        ({"plugins": ["no_such_plugin_module"]}, "cannot import plugin module"),
        ({"init_from": "missing.safetensors"}, "missing.safetensors"),
    ],
)
def test_unknown_names_fail_in_the_resolve_step_in_one_line(tmp_path, settings, message):
    from harness.errors import UsageError
    from harness.resolve import resolve_meta
    from harness.settings.meta import coerce_config

    cfg = coerce_config({"task": "quadratic", "out": str(tmp_path / "x"), **settings})
    with pytest.raises(UsageError) as info:
        resolve_meta(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()
