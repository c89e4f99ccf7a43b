"""Parsing ``key=value`` overrides, the command line's input, with Hydra's override grammar.

:func:`parse_overrides` is the one place a command's arguments are parsed: every command (and
:mod:`harness.pathology.command`) calls it once on its arguments and works on the ``Override``
objects. A malformed override is a one-line ``UsageError`` naming it.
"""

from __future__ import annotations

from typing import Any

from harness.errors import UsageError


def parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra ``Override`` objects, or a one-line ``UsageError`` for a malformed one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        bad = next((o for o in overrides if _malformed(o)), overrides[0] if overrides else "")
        raise UsageError(
            f"malformed override {bad!r}: overrides are key=value (e.g. optimizer.lr=0.01, "
            "optimizer=adam,sgd)"
        ) from exc


def _malformed(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException:
        return True
    return False
