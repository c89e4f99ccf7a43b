"""``lopt report in=[A,B]``: one comparison report over several suites' results files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_profiles import tidy

from harness.cli import main
from harness.errors import UsageError
from harness.results.io import read_many_results, write_results


def suite_folder(folder: Path, task: str, sgd_final: float, study_values: list[float]) -> Path:
    """A suite's folder: ``results.csv`` (sgd, tuned by the study ``TASK-sgd`` of the folder's
    ``optuna.db``, and lopt_mnist5k_train on ``task``, 2 seeds, the three splits) and the study."""
    import optuna

    folder.mkdir()
    study = optuna.create_study(study_name=f"{task}-sgd", storage=f"sqlite:///{folder}/optuna.db")
    for value in study_values:
        study.tell(study.ask(), value)
    tuned = json.dumps({"comparison": "train", "study": f"{task}-sgd", "trials": 4})
    runs = [(seed, split) for seed in (0, 1) for split in ("train", "valid", "test")]
    frame = pd.concat(
        [
            *(
                tidy(f"{task}s{s}", "sgd", s, [4, 2.0, sgd_final], p).assign(tags=tuned)
                for s, p in runs
            ),
            *(tidy(f"{task}l{s}", "lopt_mnist5k_train", s, [4, 1.0, 0.9], p) for s, p in runs),
        ],
        ignore_index=True,
    ).assign(task=task)
    return write_results(frame, folder / "results.csv")


def test_one_report_spans_two_suites_with_each_suites_studies(tmp_path: Path, capsys) -> None:
    paper = suite_folder(tmp_path / "paper", "alpha", 1.0, [3.0, 1.0, 2.0, 4.0])
    lm = suite_folder(tmp_path / "lm", "beta", 0.5, [5.0, 0.4, 6.0, 7.0])
    out = tmp_path / "both"
    assert main(["report", f"in=[{paper},{lm}]", f"out={out}", "kind=comparison"]) == 0
    profile = pd.read_csv(out / "profiles.csv").set_index("optimizer")
    assert (profile["workloads"] == 2).all()
    # alpha: lopt reaches sgd's target (1.0) at 1 s, sgd at 2 s; beta: only sgd reaches 0.5
    assert profile.loc["lopt_mnist5k_train", "score"] == pytest.approx(0.5)
    curves = pd.read_csv(out / "tuning_cost.csv")
    assert sorted(curves["study"].unique()) == ["alpha-sgd", "beta-sgd"]
    beta = curves[curves["study"] == "beta-sgd"]
    assert beta["prefix"].tolist() == [5.0, 0.4, 0.4]  # read from lm/optuna.db, not paper's


def test_a_run_in_two_files_or_a_file_named_twice_is_refused(tmp_path: Path, capsys) -> None:
    paper = suite_folder(tmp_path / "paper", "alpha", 1.0, [3.0, 1.0, 2.0, 4.0])
    copy = tmp_path / "copy.csv"
    copy.write_bytes(paper.read_bytes())
    with pytest.raises(UsageError, match=r"is in both .*a report reads each run once"):
        read_many_results([paper, copy])
    assert main(["report", f"in=[{paper},{paper}]", f"out={tmp_path / 'r'}"]) == 2
    assert "is given twice" in capsys.readouterr().err
    assert main(["report", "in=[]", f"out={tmp_path / 'r'}"]) == 2
    assert "in must be a results file or a list of them" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
