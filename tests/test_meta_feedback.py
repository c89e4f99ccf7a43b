"""What ``lopt meta-train`` tells its user (issue 27 item 8): what Ctrl-C saved, progress lines
without a terminal between checkpoints, a held-out loss at the clip named as such, a rerun that
says it resumes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness.meta import trainer as trainer_module
from harness.meta.trainer import MetaTrainer, progress_fields

pytestmark = pytest.mark.usefixtures("one_thread")

META = [
    "task=quadratic",
    "problems=2",
    "horizon=20",
    "outer_batches=1",
    "schedule=constant",
    "unroll_length=5",
    "eval_every=0",
    "parallel=loop",
    "threads=1",
]


ORIGINAL_STEP = MetaTrainer.step


def interrupt_at(monkeypatch: pytest.MonkeyPatch, outer_step: int) -> None:
    """Ctrl-C during outer step ``outer_step`` (1-based)."""
    step = ORIGINAL_STEP

    def step_or_interrupt(self):
        if self.outer_step + 1 == outer_step:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(MetaTrainer, "step", step_or_interrupt)


def test_ctrl_c_says_what_was_saved(tmp_path: Path, capsys, monkeypatch) -> None:
    """Before the first checkpoint it says nothing was saved (not "finished runs are saved");
    after one, which outer step a rerun resumes from."""
    out = tmp_path / "meta"
    interrupt_at(monkeypatch, 2)
    args = ["meta-train", *META, "progress=false", f"out={out}", "outer_steps=6"]
    assert main([*args, "checkpoint_every=4"]) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "finished runs" not in err
    assert not (out / "trainer_state.pt").exists()

    interrupt_at(monkeypatch, 4)
    assert main([*args, "checkpoint_every=2"]) == 130
    err = capsys.readouterr().err
    assert "outer steps up to 2 are saved" in err and "resume from outer step 2" in err


def test_a_rerun_says_it_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "meta"
    args = ["meta-train", *META, "progress=false", f"out={out}", "checkpoint_every=1"]
    assert main([*args, "outer_steps=2"]) == 0
    assert "resumes" not in capsys.readouterr().err
    assert main([*args, "outer_steps=3"]) == 0
    assert f"{out} resumes from its checkpoint at outer step 2 of 3" in capsys.readouterr().err
    assert main([*args, "outer_steps=3"]) == 0
    assert "is already trained at outer step 3 of 3" in capsys.readouterr().err


def test_progress_lines_come_between_checkpoints_without_a_terminal(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Without a terminal (pytest's stderr) a line comes every LINE_SECONDS even when the
    checkpoints are far apart: here every outer step, with LINE_SECONDS = 0."""
    monkeypatch.setattr(trainer_module, "LINE_SECONDS", 0.0)
    out = tmp_path / "meta"
    args = ["meta-train", *META, f"out={out}", "checkpoint_every=50", "outer_steps=4"]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "[meta-train" in line]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]


def test_a_heldout_loss_at_the_clip_is_named() -> None:
    """A held-out loss of 10 is shown as the loss clip (its runs diverged); 0.5 as it is."""
    cfg = SimpleNamespace(progress=False, outer_steps=10, checkpoint_every=5)
    fake = SimpleNamespace(
        cfg=cfg,
        last={"heldout_train_loss": 10.0, "heldout_valid_loss": 0.5},
        smoothed=1.0,
        cpu_seconds=0.0,
        inner_steps=0,
        eta_seconds=lambda: 1.0,
    )
    summary = progress_fields(fake)  # type: ignore[arg-type]
    assert summary["heldout_train"] == "10(=clip:diverged)"
    assert summary["heldout_valid"] == "0.5"
