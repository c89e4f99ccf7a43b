"""Where a command writes, checked before any work: writable, and nothing a user saved is lost.

* :func:`check_writable`: ``UsageError`` (one line) unless a file or folder can be created at
  ``path``: its nearest existing ancestor is a folder in which a file can be created (tried
  with an anonymous temporary file, so nothing is left behind). Catches a read-only file
  system, ``/proc``, a missing permission and a path under a file.
* :func:`check_existing`: the one scheme every command that writes a results file follows for an
  ``out`` that already exists: ``mode=new`` (the default) refuses it, ``mode=append`` adds the
  command's runs to it (runs already in it are kept, not rerun), ``mode=replace`` replaces it;
  :func:`check_existing_folder` the same for a folder of files (``lopt report``).

``lopt meta-train`` continues the run saved in its ``out`` (``resume=false`` starts again) and
``lopt suite`` updates its own results file (keeping the rows of runs it could not rerun): their
``out`` is theirs by design.

Imports only the standard library and :mod:`harness.errors`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import UsageError

#: What a command does with an ``out`` file that exists (see the module docstring).
MODES = ("new", "append", "replace")
#: The meaning of each mode, for ``--help`` and the refusal.
MODE_HELP = (
    "what to do if out exists: new (refuse), append (add the runs it lacks, keep the rest), "
    "replace (rewrite it with this command's runs)"
)


def check_writable(path: str | Path, what: str = "out") -> None:
    """``UsageError`` unless ``path`` (a file or folder to be written) can be created or
    replaced: see the module docstring. Writes nothing."""
    path = Path(path)
    ancestor = nearest_existing(path)
    folder = ancestor if ancestor.is_dir() else None
    if path.is_file():
        folder = ancestor.parent
    if folder is None:
        raise UsageError(f"cannot write {what}={str(path)!r}: {str(ancestor)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"cannot write {what}={str(path)!r}: no file can be created in {str(folder)!r} "
            f"({reason}); choose another {what}="
        ) from exc


def check_existing(path: str | Path, mode: str, what: str = "out") -> None:
    """``UsageError`` for an unknown ``mode``, or for an existing ``path`` under ``mode=new``,
    naming the ways on (:data:`MODES`)."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(path)
    if mode == "new" and path.exists():
        raise UsageError(
            f"{what}={str(path)!r} exists and is kept: add mode=append to add this command's runs "
            f"to it (those already in it are not rerun), mode=replace to replace it, or choose "
            f"another {what}="
        )
    if path.exists() and not path.is_file():
        raise UsageError(f"{what}={str(path)!r} is a folder; a results file is written there")


def check_existing_folder(path: str | Path, mode: str, what: str = "out") -> None:
    """The folder form of :func:`check_existing`, for commands that write several files into
    ``path`` (``lopt report``): ``mode=new`` refuses a folder that holds files, ``replace``
    writes into it (its files of the same names are replaced); ``append`` means nothing here."""
    if mode not in ("new", "replace"):
        raise UsageError(f"mode must be new or replace for a folder of files, got {mode!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what}={str(path)!r} is a file; a folder is written there")
    if mode == "new" and path.is_dir() and any(path.iterdir()):
        raise UsageError(
            f"{what}={str(path)!r} exists and holds files, which are kept: add mode=replace to "
            f"write into it (files of the same names are replaced), or choose another {what}="
        )


def nearest_existing(path: str | Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    found = Path(os.path.abspath(path))
    while not found.exists() and found != found.parent:
        found = found.parent
    return found
