"""harness.plan: many runs into one tidy file, in this process or in worker processes."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time

import pandas as pd
import pytest

from harness.errors import Interrupted, Unfinished, UsageError
from harness.plan import (
    RunDeadline,
    RunPlan,
    duration,
    execute,
    parts_dir,
    resolve_plan,
    run_labels,
)
from harness.runner import run


def _plans() -> list[RunPlan]:
    return [
        RunPlan(task="quadratic", optimizer=optimizer, seed=seed, steps=60, eval_every=20)
        for optimizer in ("sgd", "adam")
        for seed in (0, 1)
    ]


def _losses(frame):
    rows = frame[(frame.split == "test") & (frame.metric == "loss")]
    return rows.set_index(["optimizer", "seed", "step"])["value"].sort_index()


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column but the timing, in a fixed order of rows."""
    keys = ["run_id", "step", "split", "metric"]
    return frame.drop(columns=["wall_time_s"]).sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # the workers run at one thread: so does this process
def test_worker_processes_give_the_same_rows_as_one_process(tmp_path) -> None:
    serial = execute(_plans(), tmp_path / "serial.csv", log=lambda _: None)
    lines: list[str] = []
    parallel = execute(_plans(), tmp_path / "parallel.csv", workers=2, log=lines.append)
    assert serial.run_id.nunique() == 4
    pd.testing.assert_frame_equal(_rows(parallel), _rows(serial))
    assert _losses(parallel).equals(_losses(serial))
    assert sum(": completed after 60 steps" in line for line in lines) == 4
    assert not parts_dir(tmp_path / "parallel.csv").exists()


def test_each_plan_builds_its_optimizer_once_and_agrees_with_the_runner(tmp_path, monkeypatch):
    import harness.plan as plan_module

    built: list[str] = []
    real = plan_module.create_optimizer
    monkeypatch.setattr(
        plan_module, "create_optimizer", lambda name, **h: built.append(name) or real(name, **h)
    )
    plans = _plans()
    frame = execute(plans, tmp_path / "once.csv", log=lambda _: None)
    assert built == [plan.optimizer for plan in plans]  # resolved once, then run as built
    one = run("quadratic", "sgd", steps=60, seed=1, eval_every=20, suite="bench")
    assert resolve_plan(plans[1]).run_id == plans[1].run_id() == one.run_id
    assert list(frame.run_id.unique()) == [resolve_plan(p).run_id for p in plans]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (RunPlan(task="quadratic", optimizer="sgdd", seed=0), "unknown optimizer"),
        (RunPlan(task="quadratic", optimizer="sgd", seed=0, hparams={"lr": -1.0}), "lr must"),
        (RunPlan(task="quadratic", optimizer="sgd", seed=0, steps=0), "steps must"),
        (RunPlan(task="quadratic", optimizer="sgd", seed=0, log_every=0), "log_every must"),
    ],
)
def test_a_plan_that_cannot_run_fails_before_any_run_starts(tmp_path, bad, message) -> None:
    out = tmp_path / "bad.csv"
    with pytest.raises(UsageError, match=message):
        execute([*_plans(), bad], out, log=lambda _: None)
    assert not out.exists() and not parts_dir(out).exists()


def test_an_interrupted_invocation_is_completed_by_rerunning_it(tmp_path, monkeypatch) -> None:
    import harness.plan as plan_module

    real, seen = plan_module.execute_run, []

    def interrupted(spec, *args, **kwargs):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(spec.run_id)
        return real(spec, *args, **kwargs)

    out = tmp_path / "r.csv"
    monkeypatch.setattr(plan_module, "execute_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(_plans(), out, log=lambda _: None)
    assert not out.exists()
    assert {p.stem for p in parts_dir(out).glob("*.csv")} == set(seen)

    counted = lambda spec, *a, **k: seen.append(spec.run_id) or real(spec, *a, **k)  # noqa: E731
    monkeypatch.setattr(plan_module, "execute_run", counted)
    first_two, seen[:] = list(seen), []
    lines: list[str] = []
    resumed = execute(_plans(), out, log=lines.append)
    assert lines[0].startswith("resuming: 2 of 4 runs already saved")
    assert len(seen) == 2 and not set(seen) & set(first_two)  # only the missing runs ran
    assert not parts_dir(out).exists()
    whole = execute(_plans(), tmp_path / "whole.csv", log=lambda _: None)
    pd.testing.assert_frame_equal(_rows(resumed), _rows(whole))

    parts_dir(out).mkdir()
    (parts_dir(out) / f"{first_two[0]}.csv").write_bytes(out.read_bytes())
    seen[:] = []
    execute(_plans(), out, resume=False, log=lambda _: None)
    assert len(seen) == 4  # resume=false discards what was saved


def test_runs_go_seed_by_seed_and_the_file_keeps_the_plans_order(tmp_path, monkeypatch):
    import harness.plan as plan_module

    real, ran = plan_module.execute_run, []
    monkeypatch.setattr(
        plan_module,
        "execute_run",
        lambda spec, *a, **k: ran.append((spec.optimizer, spec.seed)) or real(spec, *a, **k),
    )
    plans = _plans()  # sgd 0, sgd 1, adam 0, adam 1
    frame = execute(plans, tmp_path / "order.csv", log=lambda _: None)
    assert ran == [("sgd", 0), ("adam", 0), ("sgd", 1), ("adam", 1)]
    assert list(frame.run_id.unique()) == [plan.run_id() for plan in plans]


def test_a_deadline_starts_no_run_that_would_end_past_it() -> None:
    now = [100.0]
    deadline = RunDeadline(10.0, clock=lambda: now[0])
    now[0] = 120.0  # already past the budget: the call's first run still starts
    assert deadline.allows_another() and not deadline.refused
    deadline = RunDeadline(10.0, clock=lambda: now[0])
    assert deadline.allows_another()  # at 0 s, the first run
    now[0] += 3.0
    deadline.finished(3.0)
    assert deadline.allows_another()  # 3 s used + 3 s (the longest) <= 10 s
    now[0] += 4.0
    deadline.finished(4.0)
    assert not deadline.allows_another()  # 7 s used + 4 s > 10 s
    assert deadline.refused and deadline.started == 2
    with pytest.raises(UsageError, match=r"^max_seconds must be > 0, got 0"):
        RunDeadline(0)


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_chunk_saves_what_it_ran_and_the_same_call_continues(tmp_path, workers) -> None:
    out = tmp_path / "chunk.csv"
    lines: list[str] = []
    # a budget any run outlasts: the first run starts (each chunk makes progress), no other
    with pytest.raises(Unfinished, match=r"^max_seconds=1e-09 used .*: 1 of 4 runs saved in "):
        execute(_plans(), out, workers=workers, max_seconds=1e-9, log=lines.append)
    assert not out.exists() and len(list(parts_dir(out).glob("*.csv"))) == 1
    assert sum("completed" in line for line in lines) == 1
    frame = execute(_plans(), out, workers=workers, max_seconds=3600, log=lines.append)
    assert "resuming: 1 of 4 runs already saved" in "\n".join(lines)
    assert sum("completed" in line for line in lines) == 4  # nothing was run twice
    assert frame.run_id.nunique() == 4 and not parts_dir(out).exists()


def _signal_after_the_first_run(lines: list[str], times: int = 1):
    """A log that sends this process SIGTERM ``times`` times once the first run is reported."""

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("[1/"):
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)

    return log


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_signal_stops_after_the_runs_in_flight_and_the_same_call_continues(tmp_path, workers):
    out = tmp_path / "stopped.csv"
    lines: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        execute(_plans(), out, workers=workers, log=_signal_after_the_first_run(lines))
    # workers=2: the second run was in flight when the signal came, and it finished
    assert stopped.value.message == (
        f"interrupted by SIGTERM after the runs in flight: {workers} of 4 runs saved in "
        f"{parts_dir(out)}; rerun the same command to continue"
    )
    assert "stopping after the runs in flight (signal again: at once)" in lines
    assert len(list(parts_dir(out).glob("*.csv"))) == workers and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    frame = execute(_plans(), out, workers=workers, log=lines.append)
    assert sum("completed" in line for line in lines) == 4  # nothing was run twice
    assert frame.run_id.nunique() == 4


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_kills_the_runs_in_flight(tmp_path) -> None:
    short = RunPlan(task="quadratic", optimizer="sgd", seed=0, steps=20, eval_every=20)
    long = RunPlan(task="quadratic", optimizer="adam", seed=0, steps=10**7, eval_every=10**7)
    out, lines = tmp_path / "killed.csv", []
    others = {child.pid for child in multiprocessing.active_children()}  # earlier tests' children
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as stopped:
        execute([short, long], out, workers=2, log=_signal_after_the_first_run(lines, times=2))
    assert type(stopped.value) is KeyboardInterrupt  # at once, not after the runs in flight
    assert time.monotonic() - began < 120  # the long run alone would take far longer
    assert [p.stem for p in parts_dir(out).glob("*.csv")] == [short.run_id()]
    assert {child.pid for child in multiprocessing.active_children()} <= others  # workers gone


FAILING_PLUGIN = """
from harness import register_optimizer
from optimizers.sgd import SGD


@register_optimizer("plan_test_fails")
class FailsAtItsFifthUpdate(SGD):
    \"\"\"SGD that raises at the fifth update of a run (the warm-up makes two).\"\"\"

    def update(self, grads, state, params):
        if state["step"] == 4:
            raise RuntimeError("update failed on purpose")
        return super().update(grads, state, params)
"""


@pytest.fixture
def failing_plugin(tmp_path, monkeypatch):
    """A plugin module registering ``plan_test_fails``; unregistered afterwards."""
    import sys

    from harness.registry import OPTIMIZERS, load_plugin_modules

    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "plan_test_plugin.py").write_text(FAILING_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    load_plugin_modules(["plan_test_plugin"])
    yield "plan_test_plugin"
    OPTIMIZERS._entries.pop("plan_test_fails", None)
    sys.modules.pop("plan_test_plugin", None)


@pytest.mark.slow
def test_a_failing_worker_stops_the_invocation_and_keeps_the_finished_runs(
    tmp_path, failing_plugin
) -> None:
    out = tmp_path / "w.csv"
    good = _plans()
    failing = RunPlan(task="quadratic", optimizer="plan_test_fails", seed=0, steps=60)
    plans = [good[0], failing, good[1], good[2], good[3]]
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="update failed on purpose"):
        execute(plans, out, workers=2, plugin_modules=[failing_plugin], log=lines.append)
    assert not out.exists()
    saved = {path.stem for path in parts_dir(out).glob("*.csv")}
    good_ids = [plan.run_id() for plan in good]
    assert good_ids[0] in saved and saved <= set(good_ids)  # finished runs are kept
    assert len(saved) < 4  # the failure stopped the submission of new runs
    assert sum("completed" in line for line in lines) == len(saved)

    rest = execute(good, out, workers=2, log=lines.append)  # without it, the rerun completes
    assert set(rest.run_id) == set(good_ids)
    assert f"resuming: {len(saved)} of 4 runs already saved" in "\n".join(lines)


@pytest.mark.slow
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


@pytest.mark.slow
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
