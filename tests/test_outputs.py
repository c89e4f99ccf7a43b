"""Where commands write (issue 27 items 2, 5, 6): an existing results file is kept unless
``mode=append|replace`` says otherwise; an unwritable ``out`` or a format without its engine is
one line and exit 2, before any work, with nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

FAST = ["task=quadratic", "steps=20", "eval_every=10", "warmup_steps=0"]
META = [
    "task=quadratic",
    "problems=2",
    "horizon=20",
    "outer_batches=1",
    "schedule=constant",
    "unroll_length=5",
    "progress=false",
    "eval_every=0",
    "parallel=loop",
    "outer_steps=1",
]


def only_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def no_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any run fail loudly: the checks must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a run started before the output was checked")

    monkeypatch.setattr("harness.plan.execute_run", refuse)


def test_an_existing_results_file_is_kept_unless_mode_says(tmp_path: Path, capsys) -> None:
    """The issue's case: a bench of sgd into a file holding adam runs is refused (the file is
    untouched, the line names mode=append and mode=replace); append adds, replace replaces."""
    out = tmp_path / "runs.csv"
    assert main(["bench", *FAST, "optimizer=adam", "seeds=3", f"out={out}"]) == 0
    saved = out.read_bytes()
    capsys.readouterr()
    assert main(["bench", *FAST, "optimizer=sgd", f"out={out}"]) == 2
    line = only_line(capsys.readouterr().err)
    assert "exists" in line and "mode=append" in line and "mode=replace" in line
    assert out.read_bytes() == saved and not (tmp_path / "runs.csv.parts").exists()

    assert main(["bench", *FAST, "optimizer=sgd", f"out={out}", "mode=append"]) == 0
    frame = pd.read_csv(out)
    assert frame.groupby("optimizer").run_id.nunique().to_dict() == {"adam": 3, "sgd": 1}
    appended = out.read_bytes()
    capsys.readouterr()
    # the same runs again: nothing reruns, nothing changes
    assert main(["bench", *FAST, "optimizer=adam,sgd", f"out={out}", "mode=append"]) == 0
    assert "2 of 2 runs are already in" in capsys.readouterr().err
    assert out.read_bytes() == appended

    assert main(["bench", *FAST, "optimizer=sgd", f"out={out}", "mode=replace"]) == 0
    assert set(pd.read_csv(out).optimizer) == {"sgd"}
    capsys.readouterr()
    assert main(["bench", *FAST, "optimizer=sgd", f"out={out}", "mode=overwrite"]) == 2
    assert "mode must be one of new, append, replace" in only_line(capsys.readouterr().err)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(
    "command",
    [
        ["bench", *FAST, "optimizer=sgd", "out=/proc/o.csv"],
        ["bench", *FAST, "optimizer=sgd", "out=/proc/deeper/o.csv"],
        ["report", "in=IN", "out=/proc/report"],
        ["meta-train", *META, "out=/proc/meta"],
        ["suite", "name=smoke", "out=/proc/smoke.csv"],
        ["pathology", "quick=true", "out=/proc/pathology"],
    ],
)
def test_an_unwritable_out_is_one_line_before_any_work(
    command: list[str], tmp_path: Path, capsys, monkeypatch
) -> None:
    """A place where no file can be created (``/proc``, as a read-only file system) is refused
    in one line, exit 2, before any run, read or meta-training step."""
    source = tmp_path / "in.csv"
    if command[0] == "report":
        assert main(["bench", *FAST, "optimizer=sgd", f"out={source}"]) == 0
        capsys.readouterr()
    no_runs(monkeypatch)
    monkeypatch.setattr(
        "harness.meta.command.create_task",
        lambda *a, **k: pytest.fail("meta-training built its task before checking out"),
    )
    args = [arg.replace("in=IN", f"in={source}") for arg in command]
    assert main(args) == 2
    line = only_line(capsys.readouterr().err)
    assert line.startswith("lopt: error: cannot write out=") and "/proc" in line


def test_an_out_under_a_file_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    no_runs(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["bench", *FAST, "optimizer=sgd", f"out={blocker / 'x.csv'}"]) == 2
    assert "is a file" in only_line(capsys.readouterr().err)
    assert blocker.read_text() == "mine"


def test_parquet_without_pyarrow_is_refused_before_any_run(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """``out=x.parquet`` without pyarrow: one line naming pyarrow, before the first run, and no
    ``x.parquet.parts/`` left behind."""
    no_runs(monkeypatch)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    out = tmp_path / "x.parquet"
    assert main(["bench", *FAST, "optimizer=sgd", f"out={out}"]) == 2
    assert "pyarrow" in only_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_report_folder_that_holds_files_is_kept_unless_mode_replace(
    tmp_path: Path, capsys
) -> None:
    """``lopt report`` into a folder holding files: refused (the files untouched) unless
    ``mode=replace``."""
    source = tmp_path / "in.csv"
    assert main(["bench", *FAST, "optimizer=sgd", f"out={source}"]) == 0
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["report", f"in={source}", f"out={report}"]) == 2
    line = only_line(capsys.readouterr().err)
    assert "holds files" in line and "mode=replace" in line
    assert [p.name for p in report.iterdir()] == ["notes.txt"]
    assert main(["report", f"in={source}", f"out={report}", "mode=replace"]) == 0
    assert (report / "notes.txt").read_text() == "mine" and len(list(report.iterdir())) > 1
    assert main(["report", f"in={source}", f"out={report}", "mode=append"]) == 2
