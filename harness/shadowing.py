"""A local file or folder named like one of lopt-harness's top-level packages shadows it.

The harness ships three top-level packages with generic names, ``harness``, ``optimizers`` and
``tasks``. Python puts the script's folder (or the working folder) first on ``sys.path``, so a
``tasks.py`` or ``optimizers/`` of the user's there is imported instead of the harness's, and
``from harness import run`` then fails deep inside with ``'tasks' is not a package``.
:func:`check_shadowing`, called when :mod:`harness` is imported, names the file instead, in one
line. It only locates the packages (``importlib.util.find_spec``), it imports nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: the harness's other top-level packages, installed next to ``harness``
SIBLINGS = ("optimizers", "tasks")


class ShadowedPackageError(ImportError):
    """A user's module stands where one of the harness's packages should be found."""


def check_shadowing(root: Path | None = None) -> None:
    """``ShadowedPackageError`` naming the first of :data:`SIBLINGS` that is not the package
    installed next to ``harness`` (in ``root``, default: the folder holding ``harness``)."""
    root = (root or Path(__file__).resolve().parent.parent).resolve()
    for name in SIBLINGS:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if module is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                continue
            if spec is None:
                continue
            origin = spec.origin
        expected = root / name / "__init__.py"
        if origin is None or Path(origin).resolve() != expected:
            raise ShadowedPackageError(
                f"lopt-harness: {origin or name!r} shadows the harness's package {name!r} "
                f"({expected}): rename your {name} module or run from another folder (the "
                f"harness's top-level packages are harness, {', '.join(SIBLINGS)})"
            )
