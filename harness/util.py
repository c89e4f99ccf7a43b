"""Low-level helpers that every layer may import: atomic file writes, plain data, markdown tables.

This module imports only the standard library, and nothing of ``harness``, ``optimizers`` or
``tasks``, so any module of the three packages can import it without an import cycle. (Importing
``harness.util`` runs ``harness/__init__.py`` first, which imports only :mod:`harness.errors` and
:mod:`harness.registry`; the registry loads the ``tasks`` and ``optimizers`` plugins lazily, on
the first lookup, never at import. That is why ``tasks`` may import it as it imports
``harness.errors``.)

* :func:`write_atomically`, :func:`write_text_atomically`, :func:`write_bytes_atomically`: a file
  is written under a temporary name in its folder and renamed, so an interrupted or failed write
  never leaves a half-written file behind (and leaves no temporary file either);
* :func:`to_plain`: mappings and sequences (tuples, OmegaConf nodes, Hydra's parsed lists) as
  ``dict`` and ``list``, recursively: what JSON and dataclass fields expect;
* :func:`markdown_table`: a GitHub-flavoured markdown table in one of the three layouts the
  harness writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

#: The layouts of :func:`markdown_table`.
TableStyle = Literal["padded", "plain", "compact"]
ALIGNMENTS = ("left", "right", "center")


# -- atomic writes ---------------------------------------------------------------------------
def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; returns ``path``.

    The temporary file is in ``path``'s folder (created if missing), so the rename is atomic;
    ``path`` gets the permissions of a new file under the current umask (``0o666 & ~umask``),
    whatever ``write`` does to the temporary file (``mkstemp`` makes it 0600, and some writers,
    such as safetensors' ``save_file``, replace it by a file of their own with 0600): the mode is
    set after ``write`` returns, before the rename. If ``write`` raises (or the process is
    interrupted in it), the temporary file is removed, ``path`` is untouched and the exception
    propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str, encoding: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomically`); returns ``path``."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomically`); returns ``path``."""
    return write_atomically(path, lambda tmp: tmp.write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- plain data ------------------------------------------------------------------------------
def to_plain(value: Any) -> Any:
    """``value`` with every mapping turned into a ``dict`` and every sequence other than a string
    or bytes (a tuple, an OmegaConf ``ListConfig``, Hydra's parsed list) into a ``list``,
    recursively; every other value is returned as it is."""
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return [to_plain(item) for item in value]
    return value


# -- markdown tables -------------------------------------------------------------------------
def markdown_table(
    header: Sequence[object],
    rows: Sequence[Sequence[object]],
    align: Sequence[str] | None = None,
    *,
    style: TableStyle = "padded",
) -> str:
    """A GitHub-flavoured markdown table (no trailing newline).

    Cells are shown with ``str``; ``|`` inside a cell is escaped and newlines become spaces.
    ``align`` is ``left``, ``right`` or ``center`` per column (default: all left). ``style``:

    * ``padded``: every column padded to its widest cell (at least 3), rules as wide;
    * ``plain``: cells as they are, rules ``---``, ``---:`` or ``:---:``: ``| a | b |``;
    * ``compact``: as ``plain``, with the rule line written without spaces: ``|---|---:|``.

    Raises ``ValueError`` when a row has another number of cells than the header, or for an
    unknown alignment or style.
    """
    width = len(header)
    if any(len(row) != width for row in rows):
        raise ValueError("every row must have as many cells as the header")
    alignment = list(align or ["left"] * width)
    if len(alignment) != width or any(a not in ALIGNMENTS for a in alignment):
        raise ValueError(f"align needs one of {', '.join(ALIGNMENTS)} per column")
    if style not in ("padded", "plain", "compact"):
        raise ValueError(f"unknown markdown table style {style!r}")
    cells = [[_cell(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    if style == "padded":
        widths = [max(3, *(len(row[i]) for row in cells)) for i in range(width)]
        rules = [_rule(a, w) for a, w in zip(alignment, widths, strict=True)]
        lines = [_line(cells[0], widths, alignment), "| " + " | ".join(rules) + " |"]
        lines += [_line(row, widths, alignment) for row in cells[1:]]
        return "\n".join(lines)
    rules = [{"left": "---", "right": "---:", "center": ":---:"}[a] for a in alignment]
    rule = "|" + "|".join(rules) + "|" if style == "compact" else "| " + " | ".join(rules) + " |"
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], rule, *lines[1:]])


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _rule(align: str, width: int) -> str:
    if align == "right":
        return "-" * (width - 1) + ":"
    if align == "center":
        return ":" + "-" * (width - 2) + ":"
    return "-" * width


def _line(cells: Sequence[str], widths: Sequence[int], align: Sequence[str]) -> str:
    padded = [
        c.rjust(w) if a == "right" else c.center(w) if a == "center" else c.ljust(w)
        for c, w, a in zip(cells, widths, align, strict=True)
    ]
    return "| " + " | ".join(padded) + " |"
