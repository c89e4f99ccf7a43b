"""Reading and writing tidy results files (CSV, or parquet when pyarrow is installed).

Writes are atomic: the file is written under a temporary name in the same folder and renamed,
so an interrupted or failed write never leaves a half-written results file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from harness.errors import UsageError
from harness.results.schema import COLUMNS

FORMATS = (".csv", ".parquet")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_results(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy table to ``path`` (.csv, or .parquet which needs pyarrow), atomically."""
    path = Path(path)
    check_results_path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise UsageError(
                f"cannot write {path}: parquet needs pyarrow (pip install pyarrow); use .csv"
            ) from exc
        return write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def check_results_path(path: str | Path) -> None:
    """``UsageError`` unless ``path`` ends in .csv or .parquet."""
    if Path(path).suffix not in FORMATS:
        raise UsageError(f"results file {str(path)!r} must end in .csv or .parquet")


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a tidy results file, or raise ``UsageError`` saying why it cannot be used."""
    path = Path(path)
    check_results_path(path)
    if not path.is_file():
        raise UsageError(f"results file {str(path)!r} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds for a corrupt file
        raise UsageError(
            f"cannot read results file {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    schema_1 = "schema_version" in frame.columns and (frame["schema_version"] == 1).all()
    if schema_1 and "task_cfg" not in frame.columns and "task" in frame.columns:
        # schema 1 did not record the task settings
        frame.insert(int(frame.columns.get_loc("task")) + 1, "task_cfg", "")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{str(path)!r} is not a lopt results table: it lacks the column(s) "
            f"{', '.join(missing)}"
        )
    return frame


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
