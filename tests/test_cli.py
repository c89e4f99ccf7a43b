"""The `lopt` command line: bench, suite, report, list, sweeps, errors, resume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.results.schema import COLUMNS

FAST = ["task=quadratic", "steps=20", "eval_every=10", "warmup_steps=0"]


def lopt(*args: str) -> int:
    return main(list(args))


def only_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_bench_writes_one_tidy_table_for_every_optimizer_and_seed(tmp_path, capsys) -> None:
    out = tmp_path / "x.csv"
    assert lopt("bench", *FAST, "optimizer=adam,sgd,momentum", "seeds=2", f"out={out}") == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.groupby("optimizer").seed.unique().map(sorted).to_dict() == {
        "adam": [0, 1],
        "momentum": [0, 1],
        "sgd": [0, 1],
    }
    assert frame.run_id.nunique() == 6 and set(frame.suite) == {"bench"}
    evals = frame[frame.split == "test"]
    assert sorted(evals.step.unique()) == [0, 10, 20]
    assert (frame.wall_time_s >= 0).all()
    assert "wrote" in capsys.readouterr().err
    assert not (tmp_path / "x.csv.parts").exists()


def test_hyperparameters_are_optimizer_dot_overrides(tmp_path) -> None:
    out = tmp_path / "lr.csv"
    assert lopt("bench", *FAST, "optimizer=sgd", "optimizer.lr=0.05", f"out={out}") == 0
    assert set(pd.read_csv(out).hparams) == {'{"lr":0.05,"weight_decay":0.0}'}


def test_multirun_sweeps_a_hyperparameter(tmp_path) -> None:
    out = tmp_path / "sweep.csv"
    assert lopt("bench", "-m", *FAST, "optimizer=sgd", "optimizer.lr=0.01,0.1", f"out={out}") == 0
    assert set(pd.read_csv(out).hparams) == {
        '{"lr":0.01,"weight_decay":0.0}',
        '{"lr":0.1,"weight_decay":0.0}',
    }


def test_task_settings_are_task_dot_overrides(tmp_path) -> None:
    out = tmp_path / "task.csv"
    assert lopt("bench", *FAST, "optimizer=sgd", "task.dim=3", f"out={out}") == 0
    assert len(pd.read_csv(out)) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer=adamm"], "unknown optimizer 'adamm'. Did you mean: adam"),
        (["task=mnist"], "unknown task 'mnist'"),
        (["optimizer=adam", "optimizer.lr=-0.1"], "adam: lr must be > 0"),
        (["optimizer=adam", "optimizer.momentum=0.9"], "adam takes no hyperparameter 'momentum'"),
        (["lr=0.1"], "optimizer hyperparameters are set as optimizer.lr=VALUE"),
        (["steps=ten"], "steps"),
        (["optimizer.lr=="], "malformed override"),
        (["stepz=10"], "stepz"),
        (["optimizer.lr=0.1,0.2"], "add -m"),
        (["seeds=0"], "seeds must be >= 1"),
        (["device=cuda:7"], "device 'cuda:7'"),
        (["out=results.txt"], "must end in .csv or .parquet"),
        (["optimizer.nesterov=maybe", "optimizer=momentum"], "nesterov"),
        (["stpes=10"], "unknown key 'stpes' for lopt bench. Did you mean: steps? Its keys are: "),
        (
            ["task.batchsize=64"],
            "quadratic takes no setting 'batchsize'. Did you mean: batch_size?",
        ),
        (["tuning.objectiv=x"], "unknown key 'tuning.objectiv'. Did you mean: tuning.objective?"),
        (["optimizer.lrr=0.1"], "adam takes no hyperparameter 'lrr'. Did you mean: lr? It takes"),
        (
            ["tuning.fixed.lr=0.1"],
            "tuning.fixed has no key 'lr' yet: add it with +tuning.fixed.lr=",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never.csv"
    has_out = any(a.startswith("out=") for a in args)
    code = lopt("bench", *FAST, *args, *([] if has_out else [f"out={out}"]))
    assert code == 2
    line = only_line(capsys.readouterr().err)
    assert line.startswith("lopt: error: ") and message in line
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_bench_resumes_with_only_the_missing_runs(tmp_path, monkeypatch) -> None:
    import harness.plan as plan

    out = tmp_path / "resume.csv"
    real_run, calls = plan.execute_run, []

    def interrupted_run(spec, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(spec.seed)
        return real_run(spec, *args, **kwargs)

    monkeypatch.setattr(plan, "execute_run", interrupted_run)
    assert lopt("bench", *FAST, "optimizer=sgd", "seeds=4", f"out={out}") == 130
    assert not out.exists() and len(list((tmp_path / "resume.csv.parts").iterdir())) == 2

    calls.clear()
    monkeypatch.setattr(
        plan,
        "execute_run",
        lambda spec, *a, **k: calls.append(spec.seed) or real_run(spec, *a, **k),
    )
    assert lopt("bench", *FAST, "optimizer=sgd", "seeds=4", f"out={out}") == 0
    assert calls == [2, 3]  # only the runs that had not finished
    assert sorted(pd.read_csv(out).seed.unique()) == [0, 1, 2, 3]
    assert not (tmp_path / "resume.csv.parts").exists()


def test_list_commands(capsys) -> None:
    assert lopt("list", "tasks") == 0
    tasks = capsys.readouterr().out
    for name in ("mnist5k_cnn16", "fmnist_cnn16", "digits_mlp", "quadratic"):
        assert name in tasks
    assert lopt("list", "optimizers", "adam*") == 0
    listed = capsys.readouterr().out
    assert "adam " in listed and "adamw" in listed and "sgd" not in listed
    assert lopt("list", "suites") == 0
    assert "small" in capsys.readouterr().out.split()
    assert lopt("list", "things") == 2


@pytest.mark.slow
def test_suite_runs_a_suite_file_and_writes_its_report(tmp_path, capsys) -> None:
    out = tmp_path / "smoke" / "results.csv"
    assert lopt("suite", "name=smoke", f"out={out}") == 0
    frame = pd.read_csv(out)
    assert set(frame.suite) == {"smoke"}
    assert set(zip(frame.task, frame.optimizer, strict=True)) == {
        ("quadratic", "sgd"),
        ("quadratic", "adam"),
        ("digits_mlp", "sgd"),
        ("digits_mlp", "adam"),
    }
    assert (tmp_path / "smoke" / "summary.md").is_file()
    assert lopt("suite", "name=smok") == 2
    assert "unknown suite 'smok'" in capsys.readouterr().err


@pytest.mark.slow
def test_report_turns_a_results_file_into_tables_and_plots(tmp_path) -> None:
    results = tmp_path / "x.csv"
    assert lopt("bench", *FAST, "optimizer=adam,sgd", "seeds=2", f"out={results}") == 0
    report = tmp_path / "report"
    assert lopt("report", f"in={results}", f"out={report}") == 0
    names = {p.name for p in report.iterdir()}
    assert {"summary.csv", "summary.md"} <= names
    assert any(name.endswith(".png") for name in names)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.csv", "does not exist"),
        (lambda d: (d / "garbage.csv").write_text("a,b\n1,2\n") and d / "garbage.csv", "lacks"),
    ],
)
def test_report_refuses_unreadable_results(tmp_path, capsys, make, message) -> None:
    source = make(tmp_path)
    assert lopt("report", f"in={source}", f"out={tmp_path / 'r'}") == 2
    assert message in only_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_a_typo_in_a_suite_key_names_the_closest_key(capsys) -> None:
    assert lopt("suite", "name=smoke", "wokers=2") == 2
    line = only_line(capsys.readouterr().err)
    assert "unknown key 'wokers' for lopt suite. Did you mean: workers?" in line
    assert "seeds" in line.split("Its keys are: ")[1]


@pytest.mark.slow
def test_results_with_a_garbage_value_or_cut_off_name_the_row_and_column(tmp_path, capsys):
    good = tmp_path / "good.csv"
    assert lopt("bench", *FAST, "optimizer=sgd", f"out={good}") == 0
    lines = good.read_text().splitlines(keepends=True)
    rows = list(csv.reader(lines))
    rows[3][rows[0].index("value")] = "abc"
    garbage = tmp_path / "garbage.csv"
    with garbage.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    cut = tmp_path / "cut.csv"
    cut.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    capsys.readouterr()
    for source, message in (
        (
            garbage,
            f"results file '{garbage}', row 3 (line 4), column 'value': 'abc' is not a number",
        ),
        (cut, f"results file '{cut}', row {len(lines) - 1} (line {len(lines)}) is cut off"),
    ):
        assert lopt("report", f"in={source}", f"out={tmp_path / 'r'}") == 2
        assert only_line(capsys.readouterr().err).startswith(f"lopt: error: {message}")
        assert not (tmp_path / "r").exists()


def test_threads_default_to_one(tmp_path) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tmp_path / "t.csv"
        assert lopt("bench", *FAST, "optimizer=sgd", f"out={out}") == 0
        assert set(pd.read_csv(out).threads) == {1}
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_help_prints_the_usage_and_every_key_with_its_default(capsys) -> None:
    assert lopt() == 0 and "Exit codes:" in capsys.readouterr().out
    for command in ("bench", "suite", "report", "tune", "studies"):
        assert lopt(command, "--help") == 0
        text = capsys.readouterr().out
        assert f"`lopt {command}` keys and their defaults:" in text
    assert lopt("bench", "--help") == 0
    assert "\nthreads: 1\n" in capsys.readouterr().out


@pytest.mark.slow
def test_list_shows_local_plugins(tmp_path) -> None:
    (tmp_path / "my_local_opt.py").write_text(
        "from harness import register_optimizer\n"
        "from optimizers.base import Optimizer, learning_rate\n\n"
        '@register_optimizer("local_signsgd")\n'
        "class LocalSignSGD(Optimizer):\n"
        '    """A local plugin."""\n'
        "    hparam_specs = (learning_rate(0.01),)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "list",
            "optimizers",
            "local*",
            "plugins=my_local_opt",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "local_signsgd" in done.stdout and "A local plugin." in done.stdout


@pytest.mark.slow
def test_the_console_script_exits_2_on_bad_input(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "bench", "optimizer=nope", f"out={tmp_path}/a.csv"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert only_line(done.stderr).startswith("lopt: error: unknown optimizer 'nope'")


def write_plugin_distribution(root: Path) -> None:
    """A third-party package, installed the way pip would: module + dist-info entry points."""
    (root / "lopt_signsgd.py").write_text(
        "import torch\n"
        "from optimizers.base import Optimizer, learning_rate\n\n"
        "class SignSGD(Optimizer):\n"
        '    """SignSGD from a third-party package."""\n'
        "    hparam_specs = (learning_rate(0.01),)\n\n"
        "    def init(self, params):\n"
        '        return {"step": 0}\n\n'
        "    def update(self, grads, state, params):\n"
        '        lr = self.hparams["lr"]\n'
        "        new = tuple(p - lr * torch.sign(g) for p, g in zip(params, grads))\n"
        '        return new, {"step": state["step"] + 1}\n'
    )
    info = root / "lopt_signsgd-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lopt-signsgd\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[lopt_harness.optimizers]\nthirdparty_signsgd = lopt_signsgd:SignSGD\n"
    )


@pytest.mark.slow
def test_an_entry_point_plugin_runs_through_the_cli(tmp_path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_plugin_distribution(site)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    listed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "list", "optimizers", "thirdparty*"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "thirdparty_signsgd" in listed.stdout and "entry point" in listed.stdout
    out = tmp_path / "plugin.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "bench",
            *FAST,
            "optimizer=thirdparty_signsgd",
            "optimizer.lr=0.05",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert set(frame.optimizer) == {"thirdparty_signsgd"} and set(frame.status) == {"completed"}


@pytest.mark.slow
def test_bench_writes_parquet_when_asked(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "x.parquet"
    assert lopt("bench", *FAST, "optimizer=sgd", f"out={out}") == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(COLUMNS) and len(frame) > 0
    report = tmp_path / "report"
    assert lopt("report", f"in={out}", f"out={report}") == 0
    assert (report / "summary.md").is_file()


def test_tune_config_and_tune_settings_agree_field_by_field() -> None:
    import dataclasses

    from harness.settings.tune import TuneConfig
    from harness.tuning.tuner import TuneSettings

    config = {f.name: f for f in dataclasses.fields(TuneConfig)}
    settings = {f.name: f for f in dataclasses.fields(TuneSettings)}
    assert set(config) - set(settings) == {"defaults", "threads", "plugins"}  # Hydra's, process's
    assert set(settings) - set(config) == {"until", "task_cfg", "fixed", "search"}  # the CLI's
    for name in sorted(set(config) & set(settings) - {"task", "optimizer"}):
        assert config[name].default == settings[name].default, name


def test_a_composed_tune_config_becomes_the_tune_settings() -> None:
    from harness.cli import composed, tune_settings
    from harness.overrides import parse_overrides
    from harness.tuning.tuner import TuneSettings

    args = ["task=quadratic", "optimizer=sgd", "trials=7", "sampler=random", "eval_every=5"]
    (cfg,) = composed("tune", parse_overrides(args), multirun=False)
    given = {"until": "saturated", "task_cfg": {"dim": 3}, "fixed": {"lr": 0.1}, "search": {}}
    expected = TuneSettings(
        task="quadratic", optimizer="sgd", trials=7, sampler="random", eval_every=5, **given
    )
    assert tune_settings(cfg, **given) == expected
