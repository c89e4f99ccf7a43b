"""Checked configs: plain data from Python, mappings or OmegaConf nodes, and the validators.

The programmatic entrances (``meta_train(...)``, ``run_pathology(...)``) take their config as a
dataclass instance, a plain mapping or a Hydra/OmegaConf node. :func:`config_data` turns any of
those into a plain dict; :func:`typed_fields` refuses unknown keys and converts each value to
its field's declared type (read with :func:`typing.get_type_hints`) where that is lossless (an
int for a float field, a list of ints for ``list[int]``), raising a one-line ``UsageError``
naming the field otherwise.

The validators below are the one set every command's settings are checked with (the checks of
the other modules of :mod:`harness.settings`, and the argument checks of the Python entrance
``harness.runner.run_spec``): each raises a one-line ``UsageError`` naming the setting, what is
allowed and the value given.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from harness.errors import UsageError

#: OmegaConf's marker of a required value (``omegaconf.MISSING``), without importing OmegaConf
MISSING = "???"


def config_data(cfg: Any, cls: type, what: str) -> dict[str, Any]:
    """``cfg`` (None, an instance of the dataclass ``cls``, a mapping or an OmegaConf node) as a
    plain dict, without a Hydra ``defaults`` list. ``what`` names the config in errors."""
    if cfg is None:
        data: dict[str, Any] = {}
    elif isinstance(cfg, cls):
        data = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping) and not type(cfg).__module__.startswith("omegaconf"):
        data = dict(cfg)
    else:
        try:
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except Exception as exc:
            raise UsageError(f"cannot read a {what} config from {cfg!r}") from exc
        if not isinstance(data, dict):
            raise UsageError(f"a {what} config must be a mapping, got {cfg!r}")
    data.pop("defaults", None)  # a Hydra primary config may carry its defaults list
    return data


def typed_fields(data: Mapping[str, Any], cls: type, command: str) -> dict[str, Any]:
    """``data`` with every value converted to the type of ``cls``'s field of that name;
    ``UsageError`` ("``command`` takes no option ...") for a key that is not a field."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(
            f"{command} takes no option {unknown[0]!r}; it takes: {', '.join(sorted(fields))}"
        )
    return {name: typed_value(name, fields[name], value) for name, value in data.items()}


def typed_value(name: str, kind: Any, value: Any) -> Any:
    """``value`` as the type ``kind`` (e.g. ``Optional[int]``, ``list[float]``) says, where
    lossless; else a one-line ``UsageError`` naming the field."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return None
        raise UsageError(f"{name} cannot be null")
    if optional:
        (kind,) = (a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{name} must be a list, e.g. [1,2]; got {value!r}")
        return [typed_value(name, args[0], v) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise UsageError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {value!r}")
    return value


# -- the validators ------------------------------------------------------------------------------
def one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``."""
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def integer(name: str, value: Any, minimum: int) -> None:
    """``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    """``value`` is an int >= 1."""
    integer(name, value, 1)


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(name: str, value: Any, low: float, strict: bool = False) -> None:
    """``value`` is a finite number >= ``low`` (> ``low`` when ``strict``)."""
    if not (finite(value) and (value > low if strict else value >= low)):
        raise UsageError(
            f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
        )


def fraction(name: str, value: Any) -> None:
    """``value`` is a finite number in [0, 1) (a momentum, a jitter)."""
    number(name, value, 0.0)
    if value >= 1.0:
        raise UsageError(f"{name} must be >= 0 and < 1, got {value}")


def at_least(name: str, value: Any, minimum: float, strict: bool = False) -> None:
    """An already typed ``value`` (a Hydra-checked int or float) is >= ``minimum`` (>
    ``minimum`` when ``strict``); ``None`` (unset) passes."""
    if value is not None and not (value > minimum if strict else value >= minimum):
        raise UsageError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
