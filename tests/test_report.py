"""The report (harness.results.report) and the figures (harness.results.plots)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import UsageError
from harness.results import report
from harness.results.derived import SPEEDUP_COLUMNS, TIME_TO_TARGET_COLUMNS
from harness.results.plots import curve_statistics, plot_task_curves
from harness.results.report import (
    build_report,
    default_reference,
    mean_std_text,
    provenance_line,
)
from harness.results.schema import COLUMNS
from harness.util import markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLITS = ("train", "valid", "test")


def tidy_run(
    run_id: str,
    optimizer: str,
    seed: int,
    losses: list[float],
    *,
    task: str = "t",
    status: str = "completed",
    accuracy: bool = True,
    device: str = "cpu (test)",
) -> pd.DataFrame:
    """Evaluations every 10 steps (1 s apart): ``losses`` on every split, plus accuracy."""
    rows = []
    for i, loss in enumerate(losses):
        metrics = {"loss": loss, **({"accuracy": 1.0 / (1.0 + loss)} if accuracy else {})}
        for split in SPLITS:
            for metric, value in metrics.items():
                rows.append((10 * i, float(i), split, metric, value))
        if i:
            rows.append((10 * i, float(i), "train_batch", "loss", loss))
    frame = pd.DataFrame(rows, columns=["step", "wall_time_s", "split", "metric", "value"])
    constant = {
        "run_id": run_id,
        "suite": "s",
        "task": task,
        "task_cfg": "{}",
        "optimizer": optimizer,
        "hparams": "{}",
        "seed": seed,
        "status": status,
        "budget_steps": 10 * (len(losses) - 1),
        "tags": "{}",
        "harness_version": "0.0",
        "schema_version": 3,
        "git_commit": "abc123",
        "torch_version": "2.x",
        "device": device,
        "threads": 1,
        "source": "bench",
    }
    return frame.assign(**constant)[list(COLUMNS)]


def synthetic() -> pd.DataFrame:
    return pd.concat(
        [
            tidy_run("a0", "adam", 0, [4.0, 2.0, 1.0]),
            tidy_run("a1", "adam", 1, [4.0, 3.0, 2.0]),
            tidy_run("s0", "sgd", 0, [4.0, 1.0, 0.5]),
            tidy_run("s1", "sgd", 1, [4.0, 1.5, 1.5]),
            tidy_run("r0", "rmsprop", 0, [4.0, math.nan], status="diverged"),
            tidy_run("q0", "sgd", 0, [3.0, 1.0], task="q", accuracy=False),
            tidy_run("q1", "rmsprop", 0, [3.0, 2.0], task="q", accuracy=False),
        ],
        ignore_index=True,
    )


EXPECTED_FILES = [
    "final_and_best.csv",
    "summary.csv",
    "speedup.csv",
    "time_to_target.csv",
    "summary.md",
    "curves_q_loss.png",
    "curves_t_loss.png",
    "curves_t_accuracy.png",
    "curves_t_learning_rate.png",  # adam's: the synthetic runs use adam and sgd on task t
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The report of :func:`synthetic` with ``reference="sgd"``: (its folder, written paths)."""
    root = tmp_path_factory.mktemp("built")
    out = root / "report"
    return out, build_report(synthetic(), out, reference="sgd")


def test_build_report_writes_every_file(built: tuple[Path, list[Path]]):
    out, written = built
    tmp_path = out.parent
    assert sorted(p.name for p in written) == sorted(EXPECTED_FILES)
    assert all(p.parent == out for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
            assert path.stat().st_size > 1000


def test_report_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(report, "_write_figures", lambda frame, folder: {})  # tables only
    build_report(synthetic(), tmp_path)
    runs = pd.read_csv(tmp_path / "final_and_best.csv")
    assert set(runs["split"]) == set(SPLITS)
    assert len(runs) == 5 * 3 * 2 + 2 * 3  # task t: 5 runs x 3 splits x 2 metrics; q: loss only
    summary = pd.read_csv(tmp_path / "summary.csv")
    row = summary[(summary["task"] == "t") & (summary["optimizer"] == "adam")]
    row = row[(row["split"] == "test") & (row["metric"] == "loss")].iloc[0]
    assert (row["n_seeds"], row["final_value_mean"], row["best_value_mean"]) == (2, 1.5, 1.5)
    speed = pd.read_csv(tmp_path / "speedup.csv")
    assert tuple(speed.columns) == SPEEDUP_COLUMNS
    # default reference: adam on t; on q (no adam) the first optimizer alphabetically, rmsprop
    assert dict(zip(speed["task"], speed["reference"], strict=True)) == {
        "q": "rmsprop",
        "t": "adam",
    }
    sgd = speed[(speed["task"] == "t") & (speed["optimizer"] == "sgd")].iloc[0]
    # target 1.5; adam reaches it at 20 steps (2 s) once; sgd at 10 steps (1 s) twice
    assert (sgd["target"], sgd["n_reached"], sgd["speedup_seconds"]) == (1.5, 2, 2.0)
    reached = pd.read_csv(tmp_path / "time_to_target.csv")
    assert tuple(reached.columns) == TIME_TO_TARGET_COLUMNS
    assert len(reached) == 7


def test_report_markdown(built: tuple[Path, list[Path]]):
    text = (built[0] / "summary.md").read_text(encoding="utf-8")
    for name in ("## t", "## q", "adam", "rmsprop", "sgd (reference)"):
        assert name in text
    assert "test accuracy" in text
    assert "device: cpu (test); torch threads: 1; torch: 2.x; git commit: abc123" in text
    assert "harness: 0.0" in text
    assert "![t curves](curves_t_loss.png)" in text
    assert "7 runs (6 completed, 1 diverged)" in text
    adam_row = next(line for line in text.splitlines() if line.startswith("| adam"))
    assert "1.5 ± 0.71" in adam_row  # final losses 1.0 and 2.0


def test_a_failure_midway_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_task_curves", broken)
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="plotting failed"):
        build_report(synthetic(), out)
    assert list(tmp_path.iterdir()) == []  # neither out nor the staging folder
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        build_report(synthetic(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_a_missing_reference_writes_nothing(tmp_path: Path):
    with pytest.raises(UsageError, match="task 'q' has no runs of the reference optimizer 'adam'"):
        build_report(synthetic(), tmp_path / "report", reference="adam")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path: Path):
    with pytest.raises(UsageError, match="no rows"):
        build_report(synthetic().iloc[:0], tmp_path / "r")
    with pytest.raises(UsageError, match="lacks the column"):
        build_report(synthetic().drop(columns="status"), tmp_path / "r")
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(UsageError, match="not a folder"):
        build_report(synthetic(), file)


def test_default_reference():
    assert default_reference(["sgd", "adam", "lion"]) == "adam"
    assert default_reference(["sgd", "lion"]) == "lion"


def test_markdown_table():
    table = markdown_table(
        ["name", "value"], [["a|b", "1"], ["long name", "22"]], ["left", "right"]
    )
    assert table.splitlines() == [
        "| name      | value |",
        "| --------- | ----: |",
        "| a\\|b      |     1 |",
        "| long name |    22 |",
    ]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [["1"]])


def test_mean_std_text():
    assert mean_std_text(1.23456, 0.0123) == "1.235 ± 0.012"
    assert mean_std_text(2.0, math.nan) == "2"
    assert mean_std_text(math.nan, math.nan) == "nan"


def test_provenance_line_flags_mixed_machines():
    frame = pd.concat(
        [tidy_run("x", "adam", 0, [1.0]), tidy_run("y", "adam", 1, [1.0], device="gpu")]
    )
    line = provenance_line(frame)
    assert "device: cpu (test) / gpu (MIXED)" in line and "torch threads: 1;" in line
    assert "not recorded" in provenance_line(frame.drop(columns="git_commit"))


def test_curve_statistics_over_seeds():
    curves = curve_statistics(synthetic(), "t")
    adam = curves[(curves["optimizer"] == "adam") & (curves["split"] == "train")]
    assert list(adam["step"]) == [0, 10, 20]
    assert list(adam["mean"]) == [4.0, 2.5, 1.5]
    assert list(adam["min"]) == [4.0, 2.0, 1.0] and list(adam["max"]) == [4.0, 3.0, 2.0]
    assert list(adam["wall_time_s"]) == [0.0, 1.0, 2.0]
    rmsprop = curves[(curves["optimizer"] == "rmsprop") & (curves["split"] == "train")]
    assert list(rmsprop["step"]) == [0]  # the NaN at step 10 is left out
    assert list(curves["split"].unique()) == ["train", "valid", "test"]


def test_plot_task_curves_writes_a_png(tmp_path: Path):
    path = plot_task_curves(synthetic(), "t", tmp_path / "sub" / "t.png", metric="accuracy")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["t.png"]
    with pytest.raises(UsageError, match="no finite loss"):
        plot_task_curves(synthetic(), "nope", tmp_path / "x.png")


@pytest.mark.slow
def test_report_of_real_runs(tmp_path: Path):
    from harness.runner import run

    frame = pd.concat(
        [
            run("digits_mlp", name, hparams, steps=30, seed=0, eval_every=10).frame()
            for name, hparams in (("adam", {"lr": 3e-3}), ("sgd", {"lr": 0.5}))
        ]
        + [run("quadratic", "sgd", {"lr": 3.0}, steps=30, seed=0, eval_every=10).frame()]
        + [run("quadratic", "sgd", {"lr": 0.5}, steps=30, seed=1, eval_every=10).frame()],
        ignore_index=True,
    )
    written = build_report(frame, tmp_path / "out")
    names = {p.name for p in written}
    assert {"curves_digits_mlp_loss.png", "curves_digits_mlp_accuracy.png"} <= names
    assert "curves_quadratic_loss.png" in names
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "adam (reference)" in text and "sgd lr=0.5 (reference)" in text
    assert "sgd lr=3.0" in text
    speed = pd.read_csv(tmp_path / "out" / "speedup.csv")
    diverged = speed[
        (speed["task"] == "quadratic") & (speed["hparams"].str.contains("3.0", regex=False))
    ]
    assert diverged["n_reached"].tolist() == [0]


def test_rows_record_the_task_settings_and_schema_1_files_still_read(tmp_path: Path):
    from harness.results.io import read_results, write_results
    from harness.runner import run

    frame = run("quadratic", "sgd", {"lr": 0.5}, steps=10, task_cfg={"dim": 4}).frame()
    (settings,) = set(frame["task_cfg"])
    assert json.loads(settings)["dim"] == 4 and "condition" in json.loads(settings)
    old = synthetic().drop(columns="task_cfg").assign(schema_version=1)
    write_results(old, tmp_path / "v1.csv")
    read = read_results(tmp_path / "v1.csv")
    assert list(read.columns) == list(COLUMNS) and set(read["task_cfg"].fillna("")) == {""}


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("seed", "one", "row 5 (line 6), column 'seed': 'one' is not a whole number"),
        ("step", "2.5", "column 'step': '2.5' is not a whole number"),
        ("wall_time_s", "fast", "column 'wall_time_s': 'fast' is not a number"),
        ("status", "finished", "column 'status': 'finished' is not a run status (completed,"),
        ("tags", "{not json", "column 'tags': '{not json' is not a JSON object"),
        ("hparams", "[1, 2]", "column 'hparams': '[1, 2]' is not a JSON object"),
    ],
)
def test_reading_results_names_the_row_and_column_of_a_bad_value(
    tmp_path: Path, column: str, value: str, message: str
):
    from harness.results.io import read_results

    frame = synthetic().astype({column: object})
    frame.loc[4, column] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UsageError, match=re.escape(message)):
        read_results(path)


def test_reading_results_keeps_nan_and_inf_values(tmp_path: Path):
    from harness.results.io import read_results

    frame = synthetic()
    frame.loc[0, "value"] = math.inf
    frame.to_csv(tmp_path / "ok.csv", index=False)
    read = read_results(tmp_path / "ok.csv")
    assert math.isinf(read.loc[0, "value"]) and read["value"].isna().any()  # the diverged run


@pytest.mark.slow
def test_a_rebuilt_report_drops_figures_of_tasks_no_longer_in_the_table(tmp_path: Path):
    out = tmp_path / "report"
    build_report(synthetic(), out, reference="sgd")
    assert (out / "curves_q_loss.png").is_file()
    (out / "notes.png").write_bytes(b"mine")
    build_report(synthetic().query("task == 't'"), out, reference="sgd")
    assert not (out / "curves_q_loss.png").exists()
    assert (out / "curves_t_loss.png").is_file() and (out / "notes.png").is_file()


def test_the_report_lists_what_was_not_reproduced(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(report, "_write_figures", lambda frame, folder: {})  # tables only
    frame = synthetic()
    kept = frame["task"] == "q"
    frame.loc[kept, "tags"] = '{"not_reproduced":"data unavailable when the suite was rerun"}'
    build_report(
        frame, tmp_path, reference="sgd", skipped={"q": "q's data is missing", "z": "gone"}
    )
    text = (tmp_path / "summary.md").read_text()
    section = text.split("## Not reproduced in this run\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == [
        "- q: NOT rerun (q's data is missing); its 2 runs are kept from an earlier run (git "
        "commit abc123), so its numbers here are that run's.",
        "- z: NOT run (gone); no earlier results were kept: it is missing.",
    ]
    build_report(synthetic(), tmp_path, reference="sgd")
    assert "Not reproduced" not in (tmp_path / "summary.md").read_text()


def train_comparison(tasks: tuple[str, ...], losses: dict[str, list[float]]) -> pd.DataFrame:
    """Two seeds of each optimizer's ``losses`` on each task, tagged ``comparison: train``."""
    runs = [
        tidy_run(f"{task}{optimizer}{seed}", optimizer, seed, values, task=task)
        for task in tasks
        for optimizer, values in losses.items()
        for seed in (0, 1)
    ]
    return pd.concat(runs, ignore_index=True).assign(tags='{"comparison":"train"}')


def test_the_comparison_marks_kept_rows_in_its_tables_and_verdicts():
    from harness.results.comparison import comparison_summary, verdicts

    frame = train_comparison(("t", "u"), {"sgd": [4.0, 1.0], "lopt_mnist5k_train": [4.0, 2.0]})
    kept = frame["task"] == "u"
    frame.loc[kept, "tags"] = '{"comparison":"train","not_reproduced":"data unavailable"}'
    summary = comparison_summary(frame)
    assert dict(zip(summary.task, summary.not_reproduced, strict=True)) == {
        "t": "",
        "u": "kept from abc123",
    }
    lines = verdicts(summary)
    assert [line.split(":")[0] for line in lines] == [
        "Speed (t, lopt_mnist5k_train)",
        "Speed (u, lopt_mnist5k_train, NOT rerun",
    ]
    assert "not_reproduced" not in comparison_summary(frame[~kept]).columns


def test_the_comparison_names_the_task_a_transferred_optimizer_was_meta_trained_on():
    from harness.results.comparison import comparison_summary, verdicts

    frame = train_comparison(
        ("t",),
        {"sgd": [4.0, 1.0], "lopt_mnist5k_train": [4.0, 2.0], "lopt_fmnist_train": [4.0, 0.5]},
    )
    moved = frame["optimizer"] == "lopt_fmnist_train"
    frame.loc[moved, "tags"] = '{"comparison":"train","transfer":"fmnist_cnn16"}'
    summary = comparison_summary(frame)
    assert dict(zip(summary.optimizer, summary.transfer_from, strict=True)) == {
        "lopt_fmnist_train": "fmnist_cnn16",
        "lopt_mnist5k_train": "",
        "sgd": "",
    }
    assert [line.split(":")[0] for line in verdicts(summary)] == [
        "Speed (t, lopt_fmnist_train, transfer from fmnist_cnn16)",
        "Speed (t, lopt_mnist5k_train)",
    ]


def test_the_tuning_section_flags_studies_that_are_not_saturated() -> None:
    def rows(tags: dict) -> pd.DataFrame:
        frame = tidy_run(f"r-{len(tags)}", "adam", 0, [1.0, 0.5])
        frame["tags"] = json.dumps(tags)
        return frame

    saturated = {"study": "s-adam", "trials": 40, "saturated": True, "saturation": "saturated: x"}
    open_study = {"study": "s-sgd", "trials": 32, "saturated": False, "saturation": "not sat: y"}
    old = {"study": "s-p1", "trials": 16}
    assert report.tuning_section(rows({"comparison": "train"})) == []
    lines = report.tuning_section(rows(saturated))
    assert "Every one of the 1 tuning studies is saturated." in lines
    text = "\n".join(
        report.tuning_section(pd.concat([rows(saturated), rows(open_study), rows(old)]))
    )
    assert "**2 of 3 tuning studies are not shown to be saturated**" in text
    assert "| s-sgd " in text and "not sat: y" in text
    assert "NOT checked: tuned before the saturation rule" in text


@pytest.mark.slow
def test_the_report_draws_the_learning_rate_schedules(tmp_path: Path) -> None:
    """Adam-family settings get their schedule; SGD (no stated rate) does not."""
    frame = pd.concat(
        [
            tidy_run("a", "adam", 0, [1.0, 0.5]).assign(hparams='{"lr": 0.01}'),
            tidy_run("c", "adam_cosine", 0, [1.0, 0.4]).assign(
                hparams='{"lr": 0.02, "decay_steps": 4, "final_fraction": 0.1}'
            ),
            tidy_run("s", "sgd", 0, [1.0, 0.6]).assign(hparams='{"lr": 0.1}'),
        ]
    ).assign(budget_steps=4)
    rates = report.learning_rate_schedules(frame)
    assert sorted(rates) == ["adam", "adam_cosine"]
    assert rates["adam"].tolist() == [0.01] * 4
    assert rates["adam_cosine"][0] == pytest.approx(0.02)
    assert rates["adam_cosine"][-1] < rates["adam_cosine"][0]
    written = build_report(frame, tmp_path / "report")
    assert "curves_t_learning_rate.png" in [Path(p).name for p in written]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "![t learning rates](curves_t_learning_rate.png)" in text
