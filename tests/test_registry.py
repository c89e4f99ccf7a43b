"""The plugin registry: lookups, wildcard listing, name clashes and entry-point discovery."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.errors import RegistrationError, UnknownNameError, UsageError
from harness.registry import (
    OPTIMIZER_ENTRY_POINT_GROUP,
    OPTIMIZERS,
    TASK_ENTRY_POINT_GROUP,
    TASKS,
    Registry,
    create_optimizer,
    create_task,
    list_optimizers,
    list_tasks,
    register_optimizer,
    register_task,
)
from optimizers.base import Optimizer
from optimizers.sgd import SGD

BUILTIN_TASKS = {"digits_mlp", "fmnist_cnn16", "mnist5k_cnn16", "quadratic"}
BUILTIN_OPTIMIZERS = {"adam", "adamw", "momentum", "rmsprop", "sgd"}


# -- lookups ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("create", "name", "kind", "close"),
    [
        (create_task, "mnist5k_cnn", "task", ["mnist5k_cnn16"]),
        (create_task, "digits", "task", ["digits_mlp"]),
        (create_optimizer, "adma", "optimizer", ["adam", "adamw"]),
        (create_optimizer, "rmsrpop", "optimizer", ["rmsprop"]),
    ],
)
def test_unknown_name_suggests_close_matches(
    create: object, name: str, kind: str, close: list[str]
) -> None:
    """An unknown name raises UnknownNameError (a UsageError) in one line that names the
    closest registered names and the `lopt list` command."""
    with pytest.raises(UnknownNameError) as info:
        create(name)  # type: ignore[operator]
    message = str(info.value)
    assert isinstance(info.value, UsageError)
    assert "\n" not in message
    assert message.startswith(f"unknown {kind} {name!r}.")
    suggestions = message.split("Did you mean: ")[1].split("?")[0].split(", ")
    assert set(close) <= set(suggestions)
    assert f"`lopt list {kind}s`" in message


def test_unknown_name_without_close_match() -> None:
    """A name like nothing registered gets no suggestion, still the `lopt list` hint."""
    with pytest.raises(UnknownNameError) as info:
        create_optimizer("zzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "`lopt list optimizers`" in str(info.value)


def test_list_all_sorted() -> None:
    """Listing without a pattern gives every built-in, sorted."""
    tasks, optimizers = list_tasks(), list_optimizers()
    assert tasks == sorted(tasks) and set(tasks) >= BUILTIN_TASKS
    assert optimizers == sorted(optimizers) and set(optimizers) >= BUILTIN_OPTIMIZERS


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            "adam*",
            [
                "adam",
                "adam_cosine",
                "adam_residual_fmnist_train",
                "adam_residual_mnist5k_train",
                "adam_residual_mnist5k_valid",
                "adam_schedule_mnist5k_train",
                "adam_schedule_mnist5k_valid",
                "adamw",
                "adamw_cosine",
            ],
        ),
        ("*prop", ["rmsprop"]),
        ("?gd", ["sgd"]),
        ("[ms]*", None),
    ],
)
def test_list_optimizers_wildcards(pattern: str, expected: list[str] | None) -> None:
    """Shell-style patterns filter the optimizer names (case-sensitively)."""
    names = list_optimizers(pattern)
    if expected is None:  # a character class: every name starting with m or s
        assert names == [n for n in list_optimizers() if n[0] in "ms"]
        assert {"momentum", "sgd"} <= set(names)
    else:
        assert names == expected
    assert list_optimizers(pattern.upper()) == []


def test_list_tasks_wildcards() -> None:
    """Wildcards on task names; a pattern matching nothing gives an empty list."""
    assert list_tasks("*_cnn16") == ["fmnist_cnn16", "mnist5k_cnn16"]
    assert list_tasks("quad*") == ["quadratic"]
    assert list_tasks("no_such_*") == []


# -- registration -----------------------------------------------------------------------------
def test_registering_a_different_object_under_a_taken_name_fails() -> None:
    """A second, different plugin under an existing name raises RegistrationError naming both
    sources, and the original stays registered."""

    class Impostor(SGD):
        """Not the real sgd."""

    with pytest.raises(RegistrationError, match=r"optimizer name 'sgd' is registered twice"):
        register_optimizer("sgd")(Impostor)
    assert OPTIMIZERS.get("sgd").factory is SGD
    assert SGD.name == "sgd"
    with pytest.raises(RegistrationError, match="'quadratic' is registered twice: by builtin"):
        register_task("quadratic")(Impostor)


def test_registering_the_same_object_again_is_harmless() -> None:
    """Registering the very same class again (as when a module is re-imported) is a no-op."""
    assert register_optimizer("sgd")(SGD) is SGD
    assert OPTIMIZERS.get("sgd").factory is SGD


def test_an_alias_is_the_same_class_under_the_old_name() -> None:
    """Registry.alias: a subclass that differs only in its name (so what records the name
    records the one typed), described as an alias; an unregistered target is refused, and
    the alias cannot take a name that is already taken."""
    registry = Registry("optimizer", "lopt_harness.test_unused", "optimizers")

    class Stepper(SGD):
        """Plain steps."""

    with pytest.raises(RegistrationError, match="register its target first"):
        registry.alias("old_stepper", Stepper)
    registry.register("stepper")(Stepper)
    old = registry.alias("old_stepper", Stepper)
    assert issubclass(old, Stepper) and old.__name__ == "Stepper"
    assert (Stepper.name, old.name) == ("stepper", "old_stepper")
    assert registry.get("old_stepper").description == "Plain steps. (alias of stepper)"
    assert registry.get("old_stepper").factory(lr=0.1).hparams == Stepper(lr=0.1).hparams
    assert registry.canonical("old_stepper") == registry.canonical("stepper") == "stepper"
    with pytest.raises(RegistrationError, match="registered twice"):
        registry.register("old_stepper")(SGD)


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "dot.ted"])
def test_invalid_names_are_refused(name: str) -> None:
    """Names must be letters, digits, '_' and '-'."""
    with pytest.raises(RegistrationError, match="invalid optimizer name"):
        Registry("optimizer", "lopt_harness.test_unused", "optimizers").register(name)


def test_builtin_entries_describe_themselves() -> None:
    """Built-ins are marked as such and describe themselves by their docstring's first line."""
    for name in BUILTIN_TASKS:
        assert TASKS.get(name).source == "builtin" and TASKS.get(name).description
    for name in BUILTIN_OPTIMIZERS:
        assert OPTIMIZERS.get(name).source == "builtin" and OPTIMIZERS.get(name).description


# -- third-party plugins via entry points -----------------------------------------------------
PLUGIN_SOURCE = '''
"""A third-party plugin package, as pip would install it."""
import torch

from optimizers.base import Optimizer, learning_rate
from tasks.quadratic import Quadratic

VERSION = "0.1"  # not callable: an entry point to it registers nothing


class SignSGD(Optimizer):
    """Sign SGD: w <- w - lr * sign(g)."""

    hparam_specs = (learning_rate(0.01),)

    def init(self, params):
        return {"step": 0}

    def update(self, grads, state, params):
        new = tuple(p - self.hparams["lr"] * torch.sign(g) for p, g in zip(params, grads))
        return new, {"step": state["step"] + 1}


class TinyQuadratic(Quadratic):
    """A 3-dimensional quadratic."""

    def __init__(self, **cfg):
        super().__init__(dim=3, **cfg)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed-looking plugin distribution in tmp_path (module + dist-info with entry
    points), on sys.path for this test only. Yields the plugin's module name.

    The global registries are loaded first, so they can never pick the plugin up."""
    list_tasks(), list_optimizers()
    module = f"lopt_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist_info = tmp_path / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{OPTIMIZER_ENTRY_POINT_GROUP}]
            signsgd_test = {module}:SignSGD
            broken_test = {module}_missing:Nope
            nothing_test = {module}:VERSION

            [{TASK_ENTRY_POINT_GROUP}]
            tiny_quadratic_test = {module}:TinyQuadratic
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_entry_point_plugins_are_discovered(plugin: str) -> None:
    """A fresh Registry finds plugins through entry points: the class is registered under the
    entry point's name with its source, and it works; the broken entry point (module missing)
    and the one pointing at a non-callable are each skipped with a warning naming them."""
    optimizers = Registry("optimizer", OPTIMIZER_ENTRY_POINT_GROUP, "optimizers")
    with pytest.warns(UserWarning) as caught:
        names = optimizers.names()
    messages = [str(w.message) for w in caught]
    assert any("'broken_test'" in m and "import failed" in m for m in messages), messages
    assert any("'nothing_test'" in m and "registered nothing" in m for m in messages), messages

    assert "signsgd_test" in names
    assert "broken_test" not in names and "nothing_test" not in names
    assert optimizers.names("signsgd_*") == ["signsgd_test"]
    entry = optimizers.get("signsgd_test")
    assert entry.source == f"entry point {plugin}:SignSGD"
    assert entry.description == "Sign SGD: w <- w - lr * sign(g)."
    opt = entry.factory(lr=0.5)
    assert isinstance(opt, Optimizer) and type(opt).name == "signsgd_test"
    (w,), state = opt.update((torch.tensor([2.0, -3.0]),), opt.init(()), (torch.zeros(2),))
    assert torch.equal(w, torch.tensor([-0.5, 0.5])) and state["step"] == 1
    with pytest.raises(UsageError, match=r"^signsgd_test: lr must be > 0"):
        entry.factory(lr=0.0)

    tasks = Registry("task", TASK_ENTRY_POINT_GROUP, "tasks")
    assert "tiny_quadratic_test" in tasks.names()
    task = tasks.get("tiny_quadratic_test").factory()
    assert task.init_params(0)[0].shape == (3,)
    with pytest.raises(UnknownNameError, match="Did you mean: tiny_quadratic_test"):
        tasks.get("tiny_quadratic")


def test_entry_points_do_not_touch_global_registries(plugin: str) -> None:
    """Discovery in a fresh Registry leaves the global registries as they were."""
    before = list_optimizers()
    with pytest.warns(UserWarning):
        Registry("optimizer", OPTIMIZER_ENTRY_POINT_GROUP, "optimizers").names()
    assert list_optimizers() == before
    assert "signsgd_test" not in before
