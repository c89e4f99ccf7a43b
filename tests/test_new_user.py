"""Where things land and how long they take (issue 27 item 9): the ETA weighs runs by their cost,
``--help`` says what each key means and lists learners and PES, default outputs land in a
gitignored folder, a local ``tasks.py`` is named instead of breaking the harness obscurely, and
``nox -s dev`` makes a ``.venv`` with ``lopt`` on its PATH."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from harness.cli import main
from harness.progress import WeightedEta
from harness.settings.bench import BenchConfig
from harness.settings.meta import MetaTrainConfig

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_weighs_runs_by_steps_and_task_cost() -> None:
    """The issue's case: a cheap quadratic run finishes first; the ETA does not extrapolate it
    to the expensive runs left, it says their task is not timed yet; once it is, the ETA is
    steps x that task's seconds per step."""
    clock = Clock()
    work = {"q": ("quadratic", 100), "m1": ("mnist", 1000), "m2": ("mnist", 2000)}
    eta = WeightedEta(3, 0, work=work, clock=clock)
    clock.now = 3.0
    eta.finished("q")
    assert eta.text() == "ETA >0s (mnist not timed yet)"
    clock.now = 43.0  # 1000 mnist steps in 40 s: 0.04 s per step
    eta.finished("m1")
    assert eta.text() == "ETA 1m20s"  # 2000 steps x 0.04 s


def test_eta_with_workers_counts_worker_seconds() -> None:
    clock = Clock()
    work = {f"r{i}": ("t", 100) for i in range(5)}
    eta = WeightedEta(5, 0, work=work, workers=2, clock=clock)
    clock.now = 5.0  # two runs in flight: one run of 100 steps took ~10 worker-seconds
    eta.finished("r0")
    assert eta.text() == "ETA 20s"  # 4 runs x 10 s over 2 workers


def test_help_says_what_each_key_means(capsys) -> None:
    """``lopt bench --help`` and ``lopt meta-train --help`` give a meaning for every key; the
    usage names learners, PES and mode=."""
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    meanings = text.split("What the keys of `lopt bench` mean:")[1]
    for name in [f.name for f in dataclasses.fields(BenchConfig) if f.name != "defaults"]:
        line = next(line for line in meanings.splitlines() if line.split()[:1] == [name])
        assert "(no description)" not in line, line
    assert "mode" in meanings and "append" in meanings
    assert main(["meta-train", "--help"]) == 0
    text = capsys.readouterr().out
    meanings = text.split("mean:")[1]
    assert "(no description)" not in meanings
    assert "learners" in text and "pes" in text


def test_default_outputs_land_in_a_gitignored_folder() -> None:
    """bench's and meta-train's default ``out`` are under ``outputs/``, which git ignores."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "outputs/" in ignored
    for out in (BenchConfig().out, MetaTrainConfig().out):
        assert out.startswith("outputs/"), out


def test_a_local_tasks_py_is_named(tmp_path: Path) -> None:
    """A ``tasks.py`` in the working folder: ``from harness import run`` fails with a line
    that names the file and what to do, not with ``'tasks' is not a package``."""
    (tmp_path / "tasks.py").write_text("x = 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", "from harness import run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "tasks.py" in last and "shadows the harness's package 'tasks'" in last
    assert "rename" in last


def test_nox_dev_session_makes_a_venv_with_lopt() -> None:
    """noxfile.py has a ``dev`` session that installs the package editable into ``.venv`` and
    says how to activate it (``.venv`` is gitignored)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    dev = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "dev"
    )
    source = ast.unparse(dev)
    assert ".venv" in source and "'-e'" in source and "activate" in source
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
