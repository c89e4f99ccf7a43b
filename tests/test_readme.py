"""The README tells the truth: its set-up commands, its plugin example, its quoted results."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from readme_blocks import QUOTED, README, ROOT, examples, quoted_section, with_quotes

TEXT = README.read_text()


def lopt_argv(command: str) -> list[str]:
    """A README `lopt ...` line as an argv that runs this checkout's CLI."""
    words = shlex.split(command)
    assert words[0] == "lopt"
    return [sys.executable, "-m", "harness.cli", *words[1:]]


def test_the_first_two_commands_are_the_whole_set_up() -> None:
    first_block = re.search(r"```bash\n(.*?)```", TEXT, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["pip install nox && nox -s paper", "pip install nox && nox -s tests"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install nox && nox -s tests" in ci


@pytest.mark.slow
def test_the_plugin_example_runs_from_a_local_file(tmp_path) -> None:
    blocks = examples(TEXT)
    (tmp_path / "my_optimizer.py").write_text(blocks["my_optimizer.py"])
    command = blocks["command"].strip()
    done = subprocess.run(
        lopt_argv(command), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / re.search(r"out=(\S+)", command).group(1)
    frame = pd.read_csv(out)
    assert set(frame.optimizer) == {"signsgd", "sgd"}
    assert set(frame.status) == {"completed"}
    listing = re.search(r"^lopt list optimizers plugins=my_optimizer", TEXT, re.M).group(0)
    listed = subprocess.run(
        lopt_argv(listing), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    assert "signsgd" in listed.stdout and "SignSGD: w <- w - lr * sign(g)." in listed.stdout


@pytest.mark.slow
def test_the_plugin_example_is_found_through_its_entry_point(tmp_path) -> None:
    blocks = examples(TEXT)
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_optimizer.py").write_text(blocks["my_optimizer.py"])
    groups = tomllib.loads(blocks["pyproject.toml"])["project"]["entry-points"]
    info = site / "my_optimizer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-optimizer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
            for group, entries in groups.items()
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    listed = subprocess.run(
        lopt_argv("lopt list optimizers signsgd"),
        cwd=tmp_path / "site",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("signsgd") and "SignSGD" in listed.stdout


def _committed(path: str) -> bool:
    """Whether ``path`` is tracked and unmodified (a local rerun of the suite changes it)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True, text=True
    )
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True, text=True
    )
    return status.returncode == 0 and not status.stdout.strip() and tracked.returncode == 0


@pytest.mark.parametrize("name", QUOTED)
def test_quoted_results_match_the_committed_files(name: str) -> None:
    if not _committed(name):
        pytest.skip(f"{name} is regenerated locally (or not in git); the README quotes the commit")
    section = quoted_section((ROOT / name).read_text(), str(Path(name).parent))
    assert section in TEXT, "run `python tests/readme_blocks.py` to update the README"
    assert with_quotes(TEXT) == TEXT
