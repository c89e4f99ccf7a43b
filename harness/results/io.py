"""Reading and writing tidy results files (CSV, or parquet when pyarrow is installed).

Writes are atomic (:func:`harness.util.write_atomically`): the file is written under a temporary
name in the same folder and renamed, so an interrupted or failed write never leaves a
half-written results file behind.

Reads accept every schema version (:mod:`harness.results.schema`): a schema-1 file gets an empty
``task_cfg``, files before schema 3 get ``source`` = ``bench``. Reads are checked: a file cut
off mid-row, or with a value of the wrong kind (a number column that holds text, an unknown
status, a JSON column that is not a JSON object), is refused with one line naming the file, the
row and the column (:func:`read_results`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from harness.errors import UsageError
from harness.outputs import check_writable
from harness.results.schema import BENCH, COLUMNS, STATUSES, with_source
from harness.util import write_atomically

#: Columns that must hold a whole number on every row.
INTEGER_COLUMNS = ("seed", "step", "budget_steps", "schema_version", "threads")
#: Columns that hold a number or nothing (NaN, written as an empty field; inf is a number).
NUMBER_COLUMNS = ("wall_time_s", "value")
#: Columns that hold a JSON object (``task_cfg`` may be empty: schema-1 files lack it).
JSON_COLUMNS = ("hparams", "tags", "task_cfg")

FORMATS = (".csv", ".parquet")


def write_results(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy table to ``path`` (.csv, or .parquet which needs pyarrow), atomically."""
    path = Path(path)
    check_results_path(path)
    if path.suffix == ".parquet":
        check_parquet_engine(path)
        return write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def check_parquet_engine(path: str | Path) -> None:
    """``UsageError`` unless pyarrow, which parquet files need, can be imported."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"cannot write {str(path)!r}: parquet needs pyarrow (pip install pyarrow); use .csv"
        ) from exc


def check_results_target(path: str | Path) -> None:
    """Before any work: ``UsageError`` unless a results file can be written at ``path`` (it ends
    in .csv or .parquet, pyarrow is there for parquet, and its folder can take a new file:
    :func:`harness.outputs.check_writable`). Writes nothing."""
    check_results_path(path)
    if Path(path).suffix == ".parquet":
        check_parquet_engine(path)
    check_writable(path)


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
    if path.suffix == ".csv":
        check_csv_rows(path)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(
            f"cannot read results file {str(path)!r}: {type(exc).__name__}: {first}"
        ) from exc
    schema_1 = "schema_version" in frame.columns and (frame["schema_version"] == 1).all()
    if schema_1 and "task_cfg" not in frame.columns and "task" in frame.columns:
        # schema 1 did not record the task settings
        frame.insert(int(frame.columns.get_loc("task")) + 1, "task_cfg", "")
    frame = with_source(frame, BENCH)  # schemas 1 and 2 had no source column: bench rows
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{str(path)!r} is not a lopt results table: it lacks the column(s) "
            f"{', '.join(missing)}"
        )
    check_values(frame, path)
    return frame


def read_many_results(paths: list[str | Path] | tuple[str | Path, ...]) -> pd.DataFrame:
    """The tidy tables of ``paths`` as one (each read by :func:`read_results`, in order), so a
    report can span suites (the paper's tasks and the language model). ``UsageError`` when a
    path is named twice or a run is in two files: a report counts each run once."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("no results file given")
    named = [str(p) for p in paths]
    twice = sorted({p for p in named if named.count(p) > 1})
    if twice:
        raise UsageError(f"results file {twice[0]!r} is given twice")
    frames = [read_results(path) for path in paths]
    seen: dict[str, Path] = {}
    for path, frame in zip(paths, frames, strict=True):
        for run_id in frame["run_id"].unique():
            if run_id in seen:
                raise UsageError(
                    f"run {run_id} is in both {str(seen[run_id])!r} and {str(path)!r}: "
                    "a report reads each run once"
                )
            seen[run_id] = path
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def check_csv_rows(path: Path) -> None:
    """``UsageError`` naming the first row whose field count differs from the header's (a file
    cut off mid-row, or a row with a stray comma)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise UsageError(f"results file {str(path)!r} is empty: it has no header row")
            for number, fields in enumerate(reader, start=1):
                if len(fields) == len(header) or not fields:
                    continue
                where = f"results file {str(path)!r}, row {number} (line {reader.line_num})"
                if len(fields) < len(header):
                    raise UsageError(
                        f"{where} is cut off: it ends before column {header[len(fields)]!r} "
                        f"({len(fields)} of {len(header)} fields); rerun the command that wrote "
                        "it, or delete the incomplete row"
                    )
                raise UsageError(
                    f"{where} has {len(fields)} fields where the header has {len(header)}"
                )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read results file {str(path)!r}: {exc}") from exc


def check_values(frame: pd.DataFrame, path: str | Path) -> None:
    """``UsageError`` naming the file, the row (1 = the first after the header) and the column
    of the first value that is not what its column holds (see the module docstring)."""

    def fail(index: int, column: str, what: str) -> None:
        position = int(frame.index.get_loc(index))
        value = frame[column].iloc[position]
        shown = "an empty field" if pd.isna(value) else repr(str(value))
        raise UsageError(
            f"results file {str(path)!r}, row {position + 1} (line {position + 2}), column "
            f"{column!r}: {shown} is not {what}"
        )

    for column in INTEGER_COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round())
        if bad.any():
            fail(bad.idxmax(), column, "a whole number")
    for column in NUMBER_COLUMNS:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & frame[column].notna()
        if bad.any():
            fail(bad.idxmax(), column, "a number")
    status = ~frame["status"].isin(STATUSES)
    if status.any():
        fail(status.idxmax(), "status", f"a run status ({', '.join(STATUSES)})")
    for column in JSON_COLUMNS:
        if column not in frame.columns:
            continue
        texts = frame[column]
        for text in texts.dropna().unique():
            if column == "task_cfg" and text == "":
                continue
            if not _is_json_object(text):
                fail((texts == text).idxmax(), column, "a JSON object")


def _is_json_object(text: object) -> bool:
    try:
        return isinstance(json.loads(str(text)), dict)
    except ValueError:
        return False
