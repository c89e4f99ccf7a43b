"""Search spaces, built from the hyperparameters an optimizer declares (:class:`HParam`).

The default space of an optimizer is its hyperparameters declared with ``tune=True`` over their
declared ranges (the learning rate: log-uniform in [1e-5, 1], [1e-5, 10] for plain SGD). A
study can change it:

* ``optimizer.NAME=VALUE`` fixes a hyperparameter (it leaves the space);
* ``search.NAME=[LOW,HIGH]`` sets a numeric hyperparameter's range (adding it if needed);
* ``search.NAME=true`` adds a hyperparameter over its declared range (booleans: both values);
* ``search.NAME=false`` removes it from the space.

Each dimension is plain data (:class:`Dimension`) that becomes an Optuna distribution, or a list
of grid points for the grid sampler (log-spaced for log dimensions, as in DeepOBS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna

from harness.errors import UsageError
from optimizers.base import HParam


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: ``kind`` is ``float``, ``int`` or ``bool``."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "bool":
            return optuna.distributions.CategoricalDistribution([False, True])
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def grid(self, points: int) -> list[Any]:
        """``points`` values spanning the range (log-spaced if ``log``); both booleans."""
        if self.kind == "bool":
            return [False, True]
        if self.log:
            values = np.geomspace(self.low, self.high, points)
        else:
            values = np.linspace(self.low, self.high, points)
        if self.kind == "int":
            return sorted({round(float(v)) for v in values})
        return [float(f"{v:.6g}") for v in values]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SearchSpace = dict[str, Dimension]


def search_space(
    optimizer: str,
    specs: tuple[HParam, ...],
    overrides: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """The space searched for ``optimizer`` (see the module docstring for the rules).

    Args:
        specs: the optimizer's declared hyperparameters.
        overrides: ``{name: [low, high] | True | False}`` from ``search.NAME=...``.
        fixed: hyperparameters fixed by the user (``optimizer.NAME=VALUE``); they are not searched.

    Raises ``UsageError`` for a name the optimizer does not take, a value of the wrong type, a
    range outside the valid values, or an empty space.
    """
    declared = {spec.name: spec for spec in specs}
    overrides = dict(overrides or {})
    fixed = dict(fixed or {})
    for name in overrides:
        if name not in declared:
            raise UsageError(
                f"search.{name}: {optimizer} takes no hyperparameter {name!r}; it takes: "
                f"{', '.join(declared) or 'none'}"
            )
        if name in fixed:
            raise UsageError(
                f"{name} is both fixed (optimizer.{name}=...) and searched (search.{name}=...): "
                "choose one"
            )
    space: SearchSpace = {}
    for name, spec in declared.items():
        if name in fixed:
            continue
        override = overrides.get(name)
        if (override is None and spec.tune) or override is True:
            space[name] = _declared_dimension(optimizer, spec)
        elif override is False or override is None:
            continue
        else:
            space[name] = _range_dimension(optimizer, spec, override)
    if not space:
        raise UsageError(
            f"nothing to tune for {optimizer}: every hyperparameter is fixed or excluded; "
            "add one with search.NAME=true or search.NAME=[LOW,HIGH]"
        )
    return space


def _declared_dimension(optimizer: str, spec: HParam) -> Dimension:
    if spec.type is bool:
        return Dimension(spec.name, "bool")
    if spec.type is str:
        raise UsageError(f"search.{spec.name}: {optimizer}'s {spec.name} is a string: not tunable")
    if spec.low is None or spec.high is None:
        raise UsageError(
            f"search.{spec.name}: {optimizer} declares no search range for {spec.name}; "
            f"give one: search.{spec.name}=[LOW,HIGH]"
        )
    return Dimension(spec.name, spec.type.__name__, float(spec.low), float(spec.high), spec.log)


def _range_dimension(optimizer: str, spec: HParam, override: Any) -> Dimension:
    name = spec.name
    if spec.type in (bool, str):
        raise UsageError(
            f"search.{name}: {optimizer}'s {name} is a {spec.type.__name__}; search.{name} takes "
            "true (search it) or false (keep it fixed)"
            if spec.type is bool
            else f"search.{name}: {optimizer}'s {name} is a string: not tunable"
        )
    is_pair = isinstance(override, (list, tuple)) and len(override) == 2
    numbers = is_pair and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in override
    )
    if not numbers:
        raise UsageError(
            f"search.{name} must be [LOW,HIGH] (two numbers), true or false; got {override!r}"
        )
    low, high = (spec.validate(v, f"search.{name}") for v in override)
    if not low < high:
        raise UsageError(f"search.{name}: LOW must be below HIGH, got [{low}, {high}]")
    if spec.log and low <= 0:
        raise UsageError(f"search.{name} is searched on a log scale: LOW must be > 0, got {low}")
    return Dimension(name, spec.type.__name__, float(low), float(high), spec.log)


def grid_points_total(space: SearchSpace, points: int) -> int:
    """The number of points of the grid over ``space``."""
    return int(np.prod([len(dim.grid(points)) for dim in space.values()]))
