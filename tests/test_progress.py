"""The one progress display (harness.progress): plain lines without a terminal (no carriage
returns, a line per ``every`` seconds, forced lines, the last one), a bar on a terminal,
nothing with progress=false (also end to end: meta-training, family meta-training, a pathology
study), and the ETA of pieces of different costs."""

from __future__ import annotations

import io

import pytest

from harness.progress import Progress, WeightedEta, display_mode


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_lines_come_every_so_often_forced_and_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(10, desc="job", stream=stream, clock=clock, every=30.0)
    assert progress.mode == "lines"
    for k in range(1, 11):
        clock.now = 10.0 * k
        progress.update(note=f"piece {k}", force=k == 4)
    progress.close()
    lines = stream.getvalue().splitlines()
    # 30 s (k=3), forced (k=4), 30 s after the forced one (k=7), the end (k=10)
    assert lines == [f"[job {k}/10] piece {k}" for k in (3, 4, 7, 10)]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_a_line_function_is_called_only_when_a_line_is_due() -> None:
    stream, clock, calls = io.StringIO(), Clock(), []

    def line() -> str:
        calls.append(1)
        return "due"

    progress = Progress(100, stream=stream, clock=clock, every=30.0)
    for _ in range(5):
        progress.update(line=line, postfix=lambda: pytest.fail("no postfix without a bar"))
    assert calls == [] and stream.getvalue() == ""
    clock.now = 31.0
    progress.update(line=line)
    assert calls == [1] and stream.getvalue() == "due\n"


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_false_prints_nothing(terminal: bool) -> None:
    stream = Terminal() if terminal else io.StringIO()
    progress = Progress(3, desc="job", show=False, stream=stream)
    progress.update(note="a", force=True)
    progress.show("a line")
    progress.write("a message")
    progress.update(2, line="the end")
    progress.close()
    assert progress.mode == "off" and stream.getvalue() == ""


def test_a_terminal_gets_a_bar_and_messages_above_it() -> None:
    stream = Terminal()
    progress = Progress(4, desc="runs", unit="run", stream=stream)
    assert progress.mode == "bar"
    progress.write("[1/4] first run: done")
    progress.update(note="loss 0.5")
    progress.update(3, line="not shown with a bar")
    text = stream.getvalue()
    assert "\r" in text and "runs: 100%" in text and "4/4" in text and "loss 0.5" in text
    assert "[1/4] first run: done\n" in text and "not shown" not in text
    assert progress.bar is None  # closed once the work is done


def test_display_modes() -> None:
    assert display_mode(None, Terminal()) == "bar"
    assert display_mode(None, io.StringIO()) == "lines"
    assert display_mode(True, io.StringIO()) == "bar"
    assert display_mode(False, Terminal()) == "off"
    assert display_mode("lines", Terminal()) == "lines"
    with pytest.raises(ValueError, match="use one of bar, lines, off"):
        display_mode("quiet")


def test_eta_without_costs_is_the_mean_pace_and_with_costs_weighs_the_pieces() -> None:
    clock = Clock()
    eta = WeightedEta(4, 1, clock=clock)  # one piece done before: not timed here
    clock.now = 10.0
    eta.finished("a")
    assert eta.count == 2 and eta.text() == "ETA 20s"  # 2 left x 10 s
    work = {"cheap": ("quadratic", 10), "dear": ("cnn", 1000), "dear2": ("cnn", 3000)}
    eta = WeightedEta(3, work=work, clock=clock)
    clock.now = 11.0
    eta.finished("cheap")  # 1 s for 10 quadratic steps says nothing about the cnn
    assert eta.text() == "ETA >0s (cnn not timed yet)"
    clock.now = 31.0
    eta.finished("dear")  # 20 s for 1000 cnn steps: 3000 steps left take 60 s
    assert eta.text() == "ETA 1m00s"


# -- end to end ------------------------------------------------------------------------------------
META = {
    "task": "quadratic",
    "problems": 2,
    "horizon": 20,
    "outer_batches": 1,
    "schedule": "constant",
    "unroll_length": 5,
    "threads": 1,
    "eval_every": 0,
    "outer_steps": 2,
    "checkpoint_every": 1,
    "parallel": "loop",  # in this process (the default may launch worker processes)
}


@pytest.mark.usefixtures("one_thread")
def test_meta_training_is_silent_with_progress_false_and_plain_without_a_terminal(
    tmp_path, capsys
) -> None:
    from harness.meta import meta_train

    meta_train({**META, "progress": False, "out": str(tmp_path / "off")})
    assert capsys.readouterr().err == ""
    meta_train({**META, "progress": None, "out": str(tmp_path / "auto")})  # pytest: no terminal
    err = capsys.readouterr().err
    assert [line.split()[1] for line in err.splitlines()] == ["1/2", "2/2"]
    assert "\r" not in err


def test_family_meta_training_and_a_study_are_silent_with_progress_false(tmp_path, capsys) -> None:
    from harness.meta.family.command import meta_train_family
    from harness.pathology.command import run_pathology

    family = {
        "family": "mlp_mix",
        "learner": "nominal_mlp",
        "learner_cfg": {"compile": False},
        "pairs": 2,
        "arch_groups": 1,
        "truncation": 5,
        "min_horizon": 10,
        "max_horizon": 20,
        "heldout_tasks": 2,
        "eval_every": 1,
        "checkpoint_every": 1,
        "parallel": "single",
        "outer_steps": 1,
    }
    meta_train_family({**family, "progress": False, "out": str(tmp_path / "family")})
    run_pathology(quick=True, study="landscape", out=str(tmp_path / "p"), progress=False)
    assert capsys.readouterr().err == ""
    meta_train_family({**family, "progress": True, "out": str(tmp_path / "family2")})
    err = capsys.readouterr().err
    assert "starting 2 pairs" in err and "[meta-train mlp_mix pes 1/1" in err and "\r" not in err


def test_eta_of_a_shared_study_counts_every_workers_pieces_and_may_be_a_cap() -> None:
    """A tuning study: its trials are counted in the storage (other workers' too); when it stops
    once saturated, its trial count is only a cap."""
    clock = Clock()
    eta = WeightedEta(40, 10, cap=True, clock=clock)
    clock.now = 60.0
    eta.observe(16)  # 6 trials in a minute here and elsewhere: 24 left take 4 minutes at most
    assert eta.text() == "ETA <=4m00s"
