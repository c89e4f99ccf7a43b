"""harness/settings/validate.py: typing a config by its dataclass's fields, and the validators every
command's settings are checked with (one-line UsageErrors naming what is allowed)."""

from __future__ import annotations

import pytest

from harness.errors import UsageError
from harness.settings.meta import MetaTrainConfig
from harness.settings.pathology import PathologyConfig
from harness.settings.validate import at_least, fraction, integer, number, one_of, typed_fields


def test_typed_fields_converts_losslessly_by_the_declared_types() -> None:
    typed = typed_fields(
        {"landscape_lengths": [1.0, 2], "sigma": 1, "threads": None, "task_cfg": {"noise": 1}},
        PathologyConfig,
        "pathology",
    )
    assert typed["landscape_lengths"] == [1, 2] and all(
        type(n) is int for n in typed["landscape_lengths"]
    )
    assert typed["sigma"] == 1.0 and type(typed["sigma"]) is float
    assert typed["threads"] is None and typed["task_cfg"] == {"noise": 1}
    assert typed_fields({"horizon": 10.0}, MetaTrainConfig, "meta-train") == {"horizon": 10}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seed": None}, "seed cannot be null"),
        ({"quick": "yes"}, "quick must be true or false, got 'yes'"),
        ({"landscape_points": 2.5}, "landscape_points must be an integer, got 2.5"),
        ({"sigma": "big"}, "sigma must be a number, got 'big'"),
        ({"variance_lrs": 1.0}, "variance_lrs must be a list, e.g. [1,2]; got 1.0"),
        ({"task_cfg": [1]}, "task_cfg must be a mapping, got [1]"),
        ({"study": 3}, "study must be a string, got 3"),
        ({"nope": 1}, "pathology takes no option 'nope'; it takes: landscape_alpha_range"),
    ],
)
def test_typed_fields_refuses_in_one_line(data, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as info:
        typed_fields(data, PathologyConfig, "pathology")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: one_of("loss", "median", ("mean", "log")), "loss must be one of mean, log"),
        (lambda: integer("seed", -1, 0), "seed must be an integer >= 0, got -1"),
        (lambda: integer("seed", True, 0), "seed must be an integer >= 0, got True"),
        (lambda: number("lr", float("nan"), 0.0, strict=True), "lr must be a finite number > 0"),
        (lambda: fraction("beta1", 1.0), "beta1 must be >= 0 and < 1, got 1.0"),
        (lambda: at_least("workers", 0, 1), "workers must be >= 1, got 0"),
        (lambda: at_least("steps", 0, 0, strict=True), "steps must be > 0, got 0"),
    ],
)
def test_validators_name_what_is_allowed(check, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="^" + message.replace("[", r"\[")):
        check()


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (lambda v: one_of("loss", v, ("mean", "log")), "log", "median"),
        (lambda v: integer("seed", v, 0), 0, -1),
        (lambda v: number("lr", v, 0.0, strict=True), 1e-3, 0.0),
        (lambda v: fraction("beta1", v), 0.0, 1.0),
        (lambda v: at_least("workers", v, 1), 1, 0),
        (lambda v: at_least("max_seconds", v, 0, strict=True), None, 0),
    ],
)
def test_validators_pass_good_values_and_unset_ones(check, good, bad) -> None:  # type: ignore[no-untyped-def]
    """The good value at (or next to) the boundary passes; the one across it is refused."""
    assert check(good) is None
    with pytest.raises(UsageError):
        check(bad)


def test_the_settings_missing_marker_is_omegaconfs() -> None:
    """harness.settings marks required values without importing OmegaConf; the marker is its."""
    import omegaconf

    from harness.settings.validate import MISSING

    assert MISSING == omegaconf.MISSING


def test_the_settings_load_without_hydra_optuna_or_torch() -> None:
    """torchrun workers and Python callers check their settings without the CLI's libraries."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)  # this checkout's harness
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    modules = ("bench", "meta", "pathology", "report", "suite", "tune", "validate")
    code = (
        "import sys\n"
        + "".join(f"import harness.settings.{m}\n" for m in modules)
        + "print(sorted(m for m in ('hydra', 'optuna', 'omegaconf', 'torch', 'harness.config')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_a_suite_file_with_an_unknown_report_kind_is_refused() -> None:
    from omegaconf import OmegaConf

    from harness.settings.suite import check_suite_file

    check_suite_file(OmegaConf.create({"name": "s", "report": "comparison"}))
    with pytest.raises(UsageError, match=r"^suite 's': report must be one of standard, compar"):
        check_suite_file(OmegaConf.create({"name": "s", "report": "bogus"}))
