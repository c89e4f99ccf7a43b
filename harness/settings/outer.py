"""The checks of the settings that the meta-training commands share (``lopt meta-train``,
``lopt meta-train family=...``, ``lopt pathology``): one definition of each.

:func:`check_shared` checks every field of :data:`SHARED` that a settings object has, raising
the one-line ``UsageError`` of the first bad value. Values only: no name is looked up here
(:mod:`harness.resolve` does that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from harness.errors import UsageError
from harness.settings.validate import fraction, integer, number, positive_int


def _seed(name: str, value: Any) -> None:
    integer(name, value, 0)


def _positive(name: str, value: Any) -> None:
    number(name, value, low=0.0, strict=True)


def _optional_positive(name: str, value: Any) -> None:
    if value is not None:
        _positive(name, value)


def _folder(name: str, value: Any) -> None:
    if not str(value):
        raise UsageError(f"{name} must name a folder")


def _mapping(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise UsageError(f"{name} must be a mapping, got {value!r}")


#: field name -> its check, ``check(name, value)``
SHARED: dict[str, Callable[[str, Any], None]] = {
    "seed": _seed,
    "outer_steps": positive_int,
    "checkpoint_every": positive_int,
    "workers": positive_int,
    "sigma": _positive,
    "lr": _positive,
    "adam_eps": _positive,
    "clip": _positive,
    "beta1": fraction,
    "beta2": fraction,
    "max_seconds": _optional_positive,
    "out": _folder,
    "task_cfg": _mapping,
    "learner_cfg": _mapping,
}


def check_shared(settings: Any) -> None:
    """Check each field of :data:`SHARED` that ``settings`` has (in that order)."""
    for name, check in SHARED.items():
        if hasattr(settings, name):
            check(name, getattr(settings, name))


def check_workers(workers: int, count: int, field: str, one: str) -> None:
    """``parallel=processes``: each of ``workers`` needs at least ``one`` of the ``count``
    (the setting ``field``)."""
    if workers > count:
        raise UsageError(
            f"workers ({workers}) must be <= {field} ({count}): each worker needs at least {one}"
        )
