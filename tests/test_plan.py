"""harness.plan: many runs into one tidy file, in this process or in worker processes."""

from __future__ import annotations

import re

import pytest

from harness.errors import UsageError
from harness.plan import RunPlan, duration, execute, parts_dir, run_labels


def _plans() -> list[RunPlan]:
    return [
        RunPlan(task="quadratic", optimizer=optimizer, seed=seed, steps=60, eval_every=20)
        for optimizer in ("sgd", "adam")
        for seed in (0, 1)
    ]


def _losses(frame):
    rows = frame[(frame.split == "test") & (frame.metric == "loss")]
    return rows.set_index(["optimizer", "seed", "step"])["value"].sort_index()


def test_worker_processes_give_the_same_rows_as_one_process(tmp_path) -> None:
    serial = execute(_plans(), tmp_path / "serial.csv", log=lambda _: None)
    lines: list[str] = []
    parallel = execute(_plans(), tmp_path / "parallel.csv", workers=2, log=lines.append)
    assert set(parallel.run_id) == set(serial.run_id)
    assert _losses(parallel).equals(_losses(serial))
    assert sum(": completed after 60 steps" in line for line in lines) == 4
    assert not parts_dir(tmp_path / "parallel.csv").exists()


def test_workers_resume_the_runs_an_interrupted_invocation_left(tmp_path) -> None:
    out = tmp_path / "r.csv"
    plans = _plans()
    execute(plans[:1], tmp_path / "first.csv", log=lambda _: None)
    # simulate an interrupted invocation: one run's part is saved, the file is not written
    parts = parts_dir(out)
    parts.mkdir()
    (tmp_path / "first.csv").rename(parts / f"{plans[0].run_id()}.csv")
    lines: list[str] = []
    frame = execute(plans, out, workers=2, log=lines.append)
    assert "resuming: 1 of 4 runs already saved" in lines[0]
    assert sum("completed" in line for line in lines) == 3
    assert frame.run_id.nunique() == 4


def test_a_failing_run_in_a_worker_is_raised_and_the_finished_runs_are_kept(tmp_path) -> None:
    out = tmp_path / "f.csv"
    broken = RunPlan(task="quadratic", optimizer="sgd", seed=9, steps=60, device="cuda:7")
    plans = [*_plans()[:2], broken]
    with pytest.raises(Exception, match="cuda"):
        execute(plans, out, workers=2, log=lambda _: None)
    assert not out.exists()
    saved = {path.stem for path in parts_dir(out).glob("*.csv")}
    assert saved == {plan.run_id() for plan in plans[:2]}


def test_workers_must_be_positive(tmp_path) -> None:
    with pytest.raises(UsageError, match="workers must be >= 1"):
        execute(_plans(), tmp_path / "bad.csv", workers=0)


def test_progress_lines_tell_equal_runs_apart_and_say_how_long_is_left(tmp_path) -> None:
    plans = [  # tuned on different objectives: the comparison tells them apart, not the lr
        RunPlan(
            task="quadratic",
            optimizer="sgd",
            seed=0,
            steps=20,
            hparams={"lr": lr},
            tags={"comparison": c},
        )
        for c, lr in (("train", 0.3), ("valid", 0.2))
    ] + [
        RunPlan(task="quadratic", optimizer="adam", seed=0, steps=20, hparams={"lr": lr})
        for lr in (0.01, 0.1)
    ]
    assert run_labels(plans) == [
        "quadratic sgd comparison=train seed 0",
        "quadratic sgd comparison=valid seed 0",
        "quadratic adam lr=0.01 seed 0",
        "quadratic adam lr=0.1 seed 0",
    ]
    lines: list[str] = []
    execute(plans, tmp_path / "p.csv", log=lines.append, progress_bars=False)
    finished = [line for line in lines if line.startswith("[")]
    assert [line.split(":")[0] for line in finished] == [
        f"[{k}/4] {label}" for k, label in enumerate(run_labels(plans), start=1)
    ]
    assert all(re.search(r"; elapsed \d+s, ETA \d+s$", line) for line in finished)
    assert finished[-1].endswith("ETA 0s")


def test_a_terminal_gets_a_bar_over_the_runs_and_other_output_plain_lines(tmp_path, capsys):
    execute(_plans(), tmp_path / "bar.csv", progress_bars=True)
    err = capsys.readouterr().err
    assert "runs: 100%" in err and "4/4" in err and "[4/4] quadratic adam seed 1" in err
    execute(_plans(), tmp_path / "plain.csv", progress_bars=None)  # captured: not a terminal
    err = capsys.readouterr().err
    assert "runs:" not in err and "%|" not in err
    assert len([line for line in err.splitlines() if line.startswith("[")]) == 4


def test_durations_read_as_minutes_and_hours() -> None:
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
