"""The README and the reference pages tell the truth: the set-up commands, the quickstart, the
examples, the numbers they quote, the generated tables, the links; and the README stays short."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from readme_blocks import EXTENDING, README, ROOT, bash_commands, examples, user_pages

from harness.results import pages

TEXT = README.read_text()
#: The README's text with line breaks and runs of spaces as single spaces (for wrapped phrases).
FLAT = " ".join(TEXT.split())
#: Pages linked from the README and docs/README.md that other branches of this sitting write;
#: remove a name once its page is merged.
PENDING_PAGES: set[str] = set()


def lopt_argv(command: str) -> list[str]:
    """A README `lopt ...` line as an argv that runs this checkout's CLI."""
    words = shlex.split(command)
    assert words[0] == "lopt"
    return [sys.executable, "-m", "harness.cli", *words[1:]]


def _env() -> dict[str, str]:
    """The environment of a subprocess that imports this checkout from any folder."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}


# -- the README's shape ----------------------------------------------------------------------------
def test_the_first_two_commands_are_the_whole_set_up() -> None:
    first_block = re.search(r"```bash\n(.*?)```", TEXT, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["pip install nox && nox -s paper", "pip install nox && nox -s tests"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install nox && nox -s tests" in ci


def test_the_readme_has_at_most_200_lines() -> None:
    assert len(TEXT.splitlines()) <= 200


def test_no_user_page_mentions_an_issue_number() -> None:
    """The history of the work is in git, not in the pages a user reads: the README, docs/ and
    the reports that `lopt report` writes under results/."""
    reports = sorted((ROOT / "results").rglob("summary.md"))
    pattern = re.compile(r"\bissues?\s*(?:#\s*)?\d+|\B#\d+\b", re.I)
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [*user_pages(), *reports]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def test_every_relative_link_of_the_user_pages_resolves() -> None:
    missing = []
    for path in user_pages():
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            name = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else ""
            if not resolved.exists() and name not in PENDING_PAGES:
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)


# -- the README's commands ------------------------------------------------------------------------
def _nox_sessions() -> set[str]:
    return set(re.findall(r"@nox\.session\ndef (\w+)\(", (ROOT / "noxfile.py").read_text()))


def test_every_readme_command_parses(tmp_path: Path, monkeypatch, capsys) -> None:
    """Each command line of the README's bash blocks is one the project runs: `lopt` lines
    compose into a checked config (names, keys, types), `nox -s` names a session, `python -m`
    names a module, `pip install` is one of the two documented installs."""
    from harness.cli import composed, dispatch
    from harness.overrides import parse_overrides

    blocks = examples(TEXT)
    (tmp_path / "my_optimizer.py").write_text(blocks["my_optimizer.py"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    installs = {'pip install "torch==2.13.0" && pip install -e .', "pip install nox"}
    checked = 0
    for line in bash_commands(TEXT):
        for command in (part.strip() for part in line.split("&&")):
            words = shlex.split(command)
            if command in installs or line in installs:
                continue
            if words[:2] == ["nox", "-s"]:
                assert words[2] in _nox_sessions(), command
            elif words[:2] == ["python", "-m"]:
                assert importlib.util.find_spec(words[2]) is not None, command
            elif words[0] == "lopt" and (words[1] == "list" or "--help" in words):
                assert dispatch(words[1:]) == 0, command
            elif words[0] == "lopt":
                overrides = [word for word in words[2:] if word not in ("-m", "--multirun")]
                configs = composed(words[1], parse_overrides(overrides), multirun="-m" in words)
                assert configs, command
            else:
                pytest.fail(f"the README runs {command!r}, which this test does not know")
            checked += 1
    capsys.readouterr()
    assert checked >= 10


def test_the_readme_torch_loop_trains_with_a_shipped_learned_optimizer(tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(examples(TEXT)["torch-loop.py"])
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**_env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    loss = float(re.search(r"final minibatch loss: (\S+)", done.stdout).group(1))
    assert loss < 0.5  # from about 2.3 (ten classes) at the start


# -- the numbers the README quotes ----------------------------------------------------------------
def _summary() -> pd.DataFrame:
    return pd.read_csv(ROOT / "results" / "paper" / "summary.csv")


def _row(comparison: str, task: str, optimizer: str) -> pd.Series:
    frame = _summary()
    rows = frame[
        (frame.comparison == comparison) & (frame.task == task) & (frame.optimizer == optimizer)
    ]
    assert len(rows) == 1, (comparison, task, optimizer)
    return rows.iloc[0]


def test_the_headline_numbers_are_those_of_the_committed_summary() -> None:
    speed = _row("train", "mnist5k_cnn16", "adam_residual_mnist5k_train")
    quoted = re.search(r"final training loss ([\d.]+)x faster in wall-clock", FLAT).group(1)
    assert quoted == f"{speed.speedup_vs_best_baseline:.3g}"
    assert "on all 5 seeds" in FLAT and speed.fraction_reached == 1 and speed.n_seeds == 5
    assert speed.best_baseline == "adam"

    learned = _row("valid", "mnist5k_cnn16", "adam_residual_mnist5k_valid")
    best = _row("valid", "mnist5k_cnn16", learned.best_baseline)
    found = re.search(r"has a test loss of ([\d.]+) against ([\d.]+) for tuned AdamW", FLAT)
    assert found.groups() == (f"{learned.test_loss_mean:.4g}", f"{best.test_loss_mean:.4g}")
    assert learned.best_baseline == "adamw_cosine"

    fmnist = _row("train", "fmnist_cnn16", "adam_residual_fmnist_train")
    quoted = re.search(r"\(speed ([\d.]+)x against tuned AdamW\)", FLAT).group(1)
    assert quoted == f"{fmnist.speedup_vs_best_baseline:.2f}"
    assert fmnist.best_baseline == "adamw_cosine"


def test_the_quickstart_tuned_losses_are_the_committed_runs() -> None:
    """The quickstart's `tuned=true` line on seed 100 reproduces these rows of the committed
    comparison (the same hyperparameters, seed and budget): the README quotes them."""
    found = re.search(r"final test losses, ([\d.]+) \(AdamW[^)]*\) and ([\d.]+) \(Adam\)", FLAT)
    frame = pd.read_csv(ROOT / "results" / "paper" / "results.csv")
    rows = frame[
        (frame.task == "mnist5k_cnn16")
        & (frame.seed == 100)
        & (frame.split == "test")
        & (frame.metric == "loss")
        & frame.tags.str.contains('"comparison": *"valid"', regex=True)
    ]
    final = rows.sort_values("step").groupby("optimizer").value.last()
    assert found.groups() == (f"{final['adamw_cosine']:.4f}", f"{final['adam']:.4f}")


# -- the generated pages --------------------------------------------------------------------------
def _committed(path: str) -> bool:
    """Whether ``path`` is tracked and unmodified (a local rerun of a suite changes it)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True, text=True
    )
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True, text=True
    )
    return status.returncode == 0 and not status.stdout.strip() and tracked.returncode == 0


@pytest.mark.parametrize("page", pages.PAGES)
def test_the_generated_pages_are_what_the_committed_results_give(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    sources = pages.sources(text)
    assert sources, f"{page} has no generated section"
    changed = [source for source in sources if not _committed(source)]
    if changed:
        pytest.skip(f"{', '.join(changed)} regenerated locally; the page quotes the commit")
    assert pages.render_page(text, page, ROOT) == text, (
        "run `python -m harness.results.pages` to update it"
    )


def test_a_generated_section_is_the_report_moved_under_the_page(tmp_path: Path) -> None:
    report = tmp_path / "results" / "demo"
    report.mkdir(parents=True)
    (report / "summary.md").write_text(
        "# Title\n\nProvenance: here.\n\n\n## Task\n\n![curve](curves.png)\n\n"
        "| a |\n|---|\n| 1 |\n\nCurves: [train/summary.md](train/summary.md), "
        "[site](https://example.org)\n"
    )
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    marker = pages.BEGIN.format(source="results/demo/summary.md")
    page.write_text(f"# Page\n\nProse.\n\n{marker}\nstale\n{pages.END}\n\nMore prose.\n")

    assert pages.write_pages(tmp_path, ["docs/page.md"]) == ["docs/page.md"]
    assert page.read_text() == (
        f"# Page\n\nProse.\n\n{marker}\n"
        "*Generated from [results/demo/summary.md](../results/demo/summary.md) by "
        "`python -m harness.results.pages`.*\n\n"
        "Provenance: here.\n\n### Task\n\n| a |\n|---|\n| 1 |\n\n"
        "Curves: [train/summary.md](../results/demo/train/summary.md), "
        f"[site](https://example.org)\n{pages.END}\n\nMore prose.\n"
    )
    assert pages.stale_pages(tmp_path, ["docs/page.md"]) == []
    assert pages.write_pages(tmp_path, ["docs/page.md"]) == []  # up to date: nothing written


def test_a_missing_source_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "docs").mkdir()
    text = f"{pages.BEGIN.format(source='results/gone/summary.md')}\nold\n{pages.END}\n"
    (tmp_path / "docs" / "results.md").write_text(text)
    assert pages.main(["--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "results/gone/summary.md does not exist" in error
    assert (tmp_path / "docs" / "results.md").read_text() == text
    assert pages.main(["--root", str(tmp_path / "nowhere")]) == 2
    assert "give --root the repository's root folder" in capsys.readouterr().err


# -- the examples ---------------------------------------------------------------------------------
def test_the_readme_optimizer_example_is_the_one_documented() -> None:
    readme, documented = examples(TEXT), examples(EXTENDING.read_text())
    for name in ("my_optimizer.py", "command", "pyproject.toml"):
        assert readme[name] == documented[name], name


@pytest.mark.slow
def test_the_plugin_example_runs_from_a_local_file(tmp_path) -> None:
    blocks = examples(TEXT)
    (tmp_path / "my_optimizer.py").write_text(blocks["my_optimizer.py"])
    command = blocks["command"].strip()
    done = subprocess.run(
        lopt_argv(command), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / re.search(r"out=(\S+)", command).group(1)
    frame = pd.read_csv(out)
    assert set(frame.optimizer) == {"signsgd", "sgd"}
    assert set(frame.status) == {"completed"}
    listing = re.search(r"`(lopt list optimizers plugins=my_optimizer)`", TEXT).group(1)
    listed = subprocess.run(
        lopt_argv(listing), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
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


def test_the_task_example_runs_from_a_local_file(tmp_path: Path) -> None:
    blocks = examples(EXTENDING.read_text())
    (tmp_path / "my_task.py").write_text(blocks["my_task.py"])
    command = blocks["task-command"].strip()
    done = subprocess.run(
        lopt_argv(command), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / re.search(r"out=(\S+)", command).group(1))
    assert set(frame.task) == {"wine_mlp"} and set(frame.optimizer) == {"adam", "sgd"}
    assert set(frame.status) == {"completed"} and frame.seed.nunique() == 2
    test_loss = frame[(frame.split == "test") & (frame.metric == "loss")]
    assert test_loss.sort_values("step").groupby("run_id").value.last().max() < 0.5
