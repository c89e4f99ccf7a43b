"""Ctrl-C to ``lopt meta-train family=... parallel=processes workers=2`` (and to the per-problem
``lopt meta-train task=...``): every process of the run is gone within seconds, one line (no
traceback), exit 130, the last checkpoint intact, and the same command resumes from it
(harness.meta.processes); the run's files have the usual permissions."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.meta.checkpoint import load_trainer_state
from harness.meta.family.trainer import STATE_FILE as FAMILY_STATE
from harness.meta.trainer import LOG_FILE
from harness.meta.trainer import STATE_FILE as TASK_STATE

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^lopt: interrupted at outer step (\d+); rerun the same command to continue$")


#: the two commands that launch torchrun workers: tiny runs, a checkpoint every outer step
FAMILY = {
    "family": "mlp_mix",
    "learner": "nominal_mlp",
    "learner_cfg.compile": "false",
    "pairs": 4,
    "arch_groups": 2,
    "truncation": 10,
    "min_horizon": 20,
    "max_horizon": 40,
    "heldout_tasks": 2,
    "eval_every": 100,
}
PER_PROBLEM = {
    "task": "quadratic",
    "problems": 6,
    "horizon": 30,
    "outer_batches": 2,
    "schedule": "linear",
    "min_unroll": 3,
    "max_unroll": 9,
    "progress": "false",
}
STATE = {"family": FAMILY_STATE, "task": TASK_STATE}


def _command(settings: dict, out: Path, outer_steps: int) -> list[str]:
    """``lopt meta-train`` of ``settings`` on 2 torchrun workers."""
    run = {
        **settings,
        "checkpoint_every": 1,
        "parallel": "processes",
        "workers": 2,
        "seed": 26,
        "outer_steps": outer_steps,
        "out": str(out),
    }
    return [sys.executable, "-m", "harness.cli", "meta-train"] + [
        f"{key}={value}" for key, value in run.items()
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _descendants(root: int) -> set[int]:
    """The pids of ``root``'s descendants now (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(stat[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="walks /proc for the worker processes")
@pytest.mark.parametrize("settings", [FAMILY, PER_PROBLEM], ids=["family", "task"])
def test_ctrl_c_stops_every_worker_prints_one_line_and_a_rerun_resumes(tmp_path, settings):
    out = tmp_path / "run"
    state_file = out / STATE[next(iter(settings))]
    # a session of its own, as a shell gives a foreground job: the "terminal" signals its group
    lopt = subprocess.Popen(
        _command(settings, out, outer_steps=100_000),
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not state_file.is_file() and time.monotonic() < deadline:
            assert lopt.poll() is None, lopt.communicate()
            time.sleep(0.2)
        assert state_file.is_file(), "no checkpoint within 240 s"
        time.sleep(1.0)  # into the next outer step
        workers = _descendants(lopt.pid)
        assert len(workers) >= 3  # torchrun and its two ranks
        began = time.monotonic()
        os.killpg(lopt.pid, signal.SIGINT)  # Ctrl-C in the terminal
        _, stderr = lopt.communicate(timeout=60)
        stopped_after = time.monotonic() - began
    finally:
        if lopt.poll() is None:
            os.killpg(lopt.pid, signal.SIGKILL)
            lopt.wait()
    assert lopt.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    match = LINE.match(last)
    assert match, stderr
    assert stopped_after < 15, stopped_after
    time.sleep(0.5)
    assert not [pid for pid in workers if _running(pid)], "a worker outlived Ctrl-C"
    saved = int(load_trainer_state(state_file)["outer_step"])
    assert saved == int(match.group(1)) >= 1
    before = pd.read_csv(out / LOG_FILE)

    # the same command (one more step, to stop soon) continues from the checkpoint
    rerun = subprocess.run(
        _command(settings, out, outer_steps=saved + 1),
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{saved + 1} outer steps" in rerun.stdout, rerun.stdout
    after = pd.read_csv(out / LOG_FILE)
    assert int(load_trainer_state(state_file)["outer_step"]) == saved + 1
    # the rows of the saved steps are kept (a resumed chunk may add a held-out evaluation of
    # the step it starts from)
    kept = after[after["outer_step"] < saved].reset_index(drop=True)
    earlier = before[before["outer_step"] < saved].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, earlier)
    assert sorted(after["outer_step"].unique())[-1] == saved + 1
    # every file of the run (checkpoints included) has the mode of a new file: 0o666 & ~umask
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert "lopt.safetensors" in modes
    assert all(mode == 0o666 & ~umask for mode in modes.values()), modes
