"""Checked dataclass configs from Python, mappings or OmegaConf nodes.

The programmatic entrances (``meta_train(...)``, ``run_pathology(...)``) take their config as a
dataclass instance, a plain mapping or a Hydra/OmegaConf node. :func:`config_data` turns any of
those into a plain dict; :func:`typed_fields` refuses unknown keys and converts each value to
its field's declared type where that is lossless (an int for a float field, a list of ints for
``list[int]``), raising a one-line ``UsageError`` naming the field otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.errors import UsageError


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
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(
            f"{command} takes no option {unknown[0]!r}; it takes: {', '.join(sorted(fields))}"
        )
    return {name: typed_value(name, fields[name], value) for name, value in data.items()}


def typed_value(name: str, kind: str, value: Any) -> Any:
    """``value`` as the annotation ``kind`` (e.g. ``Optional[int]``, ``list[float]``) says,
    where lossless; else a one-line ``UsageError`` naming the field."""
    if value is None:
        if kind.startswith("Optional"):
            return None
        raise UsageError(f"{name} cannot be null")
    if kind.startswith("Optional["):
        kind = kind[len("Optional[") : -1]
    if kind.startswith("list"):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{name} must be a list, e.g. [1,2]; got {value!r}")
        inner = kind[len("list[") : -1]
        return [typed_value(name, inner, v) for v in value]
    if kind.startswith("dict"):
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise UsageError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {value!r}")
    return value
