"""Suites: tuned entries, tags, optional tasks, fresh=true, and the comparison report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.errors import DatasetUnavailableError, UsageError
from harness.results.schema import canonical_json
from harness.settings.suite import SuiteFile, suite_entries
from harness.suite import SuiteRun, run_suite
from harness.tuning.tuner import TuneSettings, tune
from optimizers.checkpoint import load_lopt_checkpoint

BUDGET = 40


def suite_config(tmp_path: Path, runs: list[dict], **fields) -> OmegaConf:
    data = {
        "name": "toy",
        "seeds": 2,
        "eval_every": 10,
        "log_every": 10,
        "tuning": {"budget_steps": BUDGET, "storage": f"sqlite:///{tmp_path}/optuna.db"},
        "runs": runs,
        **fields,
    }
    return OmegaConf.merge(OmegaConf.structured(SuiteFile), data)


def comparison_runs(learned: dict) -> list[dict]:
    runs = []
    for comparison, objective in (("train", "train_loss"), ("valid", "valid_loss")):
        for optimizer in ("sgd", "adam"):
            runs.append(
                {
                    "task": "quadratic",
                    "optimizer": optimizer,
                    "steps": BUDGET,
                    "tuned": True,
                    "tuning": {"objective": objective, "trials": 3},
                    "tags": {"comparison": comparison},
                }
            )
        runs.append({**learned, "tags": {"comparison": comparison}})
    return runs


@pytest.mark.slow
def test_a_comparison_suite_reports_both_targets(tmp_path) -> None:
    for objective in ("train_loss", "valid_loss"):
        for optimizer in ("sgd", "adam"):
            tune(
                TuneSettings(
                    task="quadratic",
                    optimizer=optimizer,
                    objective=objective,
                    trials=3,
                    budget_steps=BUDGET,
                    eval_seeds=0,
                    storage=f"sqlite:///{tmp_path}/optuna.db",
                    out=str(tmp_path / "tuning"),
                ),
                log=lambda _m: None,
            )
    learned = {"task": "quadratic", "optimizer": "lopt", "steps": BUDGET}
    suite = suite_config(tmp_path, comparison_runs(learned), report="comparison")
    out = tmp_path / "paper" / "results.csv"
    outcome = run_suite(SuiteRun(suite=suite, seeds=2, out=out), log=lambda _m: None)
    frame = outcome.frame
    assert outcome.complete and frame.run_id.nunique() == 12
    tags = frame.tags.map(json.loads)
    assert set(tags.map(lambda t: t["comparison"])) == {"train", "valid"}
    tuned = tags[frame.optimizer == "sgd"]
    assert tuned.map(lambda t: t["trials"]).eq(3).all()
    summary = pd.read_csv(tmp_path / "paper" / "summary.csv")
    assert list(summary.columns[:7]) == [
        "comparison",
        "task",
        "optimizer",
        "role",
        "speedup_vs_best_baseline",
        "test_loss_mean",
        "test_loss_std",
    ]
    assert len(summary) == 6
    for split in ("train", "valid", "test"):
        for suffix in ("mean", "std", "best_mean", "best_std"):
            assert summary[f"{split}_loss_{suffix}"].notna().all()
    assert frame.git_commit.notna().all() and frame.task_cfg.map(json.loads).map(len).gt(0).all()
    assert set(summary[summary.role == "learned"].optimizer) == {"lopt"}
    best = summary[summary.optimizer == summary.best_baseline]
    assert (best.speedup_vs_best_baseline == 1.0).all()
    text = (tmp_path / "paper" / "summary.md").read_text()
    assert "Provenance: " in text and "best test loss" in text
    assert "Speed (quadratic, lopt)" in text and "Generalisation (quadratic, lopt)" in text
    from harness.cli import main

    again = tmp_path / "again"
    assert main(["report", f"in={out}", f"out={again}", "kind=comparison"]) == 0
    assert pd.read_csv(again / "summary.csv").equals(summary)
    assert main(["report", f"in={out}", f"out={again}", "kind=paper"]) == 2
    for comparison in ("train", "valid"):
        assert (tmp_path / "paper" / comparison / "summary.md").is_file()
        assert (tmp_path / "paper" / comparison / "curves_quadratic_loss.png").is_file()


def make_unavailable(monkeypatch, task: str) -> None:
    """``task``'s data is "not on this machine": the suite's availability check fails."""
    import harness.suite as suite_module

    real = suite_module.create_task

    def create_task(name, **cfg):
        if name == task:
            raise DatasetUnavailableError(f"{task} data not here: install it")
        return real(name, **cfg)

    monkeypatch.setattr(suite_module, "create_task", create_task)


TWO_TASKS = [
    {"task": "quadratic", "optimizer": "sgd", "steps": 20},
    {"task": "quadratic", "optimizer": "adam", "steps": 20},
    {"task": "digits_mlp", "optimizer": "sgd", "steps": 20},
    {"task": "digits_mlp", "optimizer": "adam", "steps": 20},
]


@pytest.mark.slow
def test_a_skipped_task_keeps_its_earlier_results_and_says_so(tmp_path, monkeypatch) -> None:
    suite = suite_config(tmp_path, TWO_TASKS, optional_tasks=["digits_mlp"])
    out = tmp_path / "suite" / "results.csv"
    first = run_suite(SuiteRun(suite=suite, seeds=2, out=out, report=False), log=lambda _m: None)
    assert first.complete and set(first.frame.task) == {"quadratic", "digits_mlp"}
    before = pd.read_csv(out)
    stale = tmp_path / "suite" / "curves_gone_task_loss.png"  # a figure of no task in the table
    stale.write_bytes(b"old")

    make_unavailable(monkeypatch, "digits_mlp")
    lines: list[str] = []
    outcome = run_suite(SuiteRun(suite=suite, seeds=2, out=out), log=lines.append)
    assert not outcome.complete
    (skipped,) = outcome.skipped
    assert (skipped.task, skipped.runs, skipped.kept_runs) == ("digits_mlp", 4, 4)
    after = pd.read_csv(out)
    assert len(after) == len(before)  # nothing lost
    kept = after[after.task == "digits_mlp"]
    old = before[before.task == "digits_mlp"]
    assert kept.value.tolist() == old.value.tolist() and set(kept.run_id) == set(old.run_id)
    assert kept.tags.map(json.loads).map(lambda t: "not_reproduced" in t).all()
    rerun = after[after.task == "quadratic"]
    assert not rerun.tags.map(json.loads).map(lambda t: "not_reproduced" in t).any()
    # the last line says what was not reproduced, and why
    assert lines[-1].startswith("NOT reproduced: digits_mlp (skipped: digits_mlp data not here")
    assert "4 of its 4 runs are kept" in lines[-1]
    text = (tmp_path / "suite" / "summary.md").read_text()
    section = text.split("## Not reproduced in this run", 1)[1].split("##", 1)[0]
    assert "digits_mlp: NOT rerun (digits_mlp data not here: install it)" in section
    assert "its 4 runs are kept from an earlier run" in section
    assert "## digits_mlp (NOT rerun: kept from an earlier run)" in text  # tables from kept rows
    assert (tmp_path / "suite" / "curves_digits_mlp_loss.png").is_file()
    assert not stale.exists()

    # a second offline run keeps them again; rows of the task that no run of the suite makes
    # (here: seed 1, once the suite is run with one seed) are written aside, not dropped
    again = run_suite(SuiteRun(suite=suite, seeds=1, out=out, report=False), log=lines.append)
    assert again.skipped[0].kept_runs == 2
    aside = pd.read_csv(again.skipped[0].aside)
    assert set(aside.seed) == {1} and set(aside.task) == {"digits_mlp"}
    assert len(pd.read_csv(out)[lambda f: f.task == "digits_mlp"]) + len(aside) == len(old)


@pytest.mark.slow
def test_a_skipped_task_without_earlier_results_is_reported_missing(tmp_path, monkeypatch):
    make_unavailable(monkeypatch, "digits_mlp")
    notices: list[str] = []
    suite = suite_config(tmp_path, TWO_TASKS, optional_tasks=["digits_mlp"])
    outcome = run_suite(SuiteRun(suite=suite, seeds=1, out=tmp_path / "r.csv"), log=notices.append)
    assert set(outcome.frame.task) == {"quadratic"} and not outcome.complete
    assert any("skipping digits_mlp: digits_mlp data not here" in n for n in notices)
    assert "none of its 2 runs had earlier rows" in notices[-1]
    text = (tmp_path / "summary.md").read_text()
    assert "digits_mlp: NOT run (digits_mlp data not here: install it); no earlier" in text
    only_missing = suite_config(tmp_path, TWO_TASKS[2:], optional_tasks=["digits_mlp"])
    with pytest.raises(UsageError, match="no run is left"):
        run_suite(SuiteRun(suite=only_missing, seeds=1, out=tmp_path / "s.csv"), log=print)


@pytest.mark.slow
def test_lopt_suite_exits_3_when_a_task_was_not_rerun(tmp_path, monkeypatch, capsys) -> None:
    from harness.cli import main

    out = tmp_path / "smoke" / "results.csv"
    args = ["suite", "name=smoke", "suite.optional_tasks=[digits_mlp]", f"out={out}"]
    assert main([*args, "report=false"]) == 0
    rows = len(pd.read_csv(out))
    make_unavailable(monkeypatch, "digits_mlp")
    capsys.readouterr()
    assert main(args) == 3
    last = capsys.readouterr().err.strip().splitlines()[-2:]
    assert last[0].startswith("NOT reproduced: digits_mlp (skipped:")
    assert last[1].startswith("lopt: incomplete: digits_mlp not rerun")
    assert len(pd.read_csv(out)) == rows


@pytest.mark.slow
def test_lopt_suite_in_chunks_exits_75_until_done(tmp_path, capsys) -> None:
    from harness.cli import main

    out = tmp_path / "smoke" / "results.csv"
    args = [
        "suite",
        "name=smoke",
        "suite.runs=[{task: quadratic, optimizer: sgd, steps: 30}]",
        "seeds=2",
        f"out={out}",
        "report=false",
    ]
    assert main([*args, "max_seconds=1e-9"]) == 75
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"lopt: unfinished: max_seconds=1e-09 used .*: 1 of 2 runs saved in ", last)
    assert not out.exists()
    assert main([*args, "max_seconds=600"]) == 0
    assert "resuming: 1 of 2 runs already saved" in capsys.readouterr().err
    assert pd.read_csv(out).run_id.nunique() == 2
    assert main([*args, "max_seconds=0"]) == 2
    assert capsys.readouterr().err.strip() == "lopt: error: max_seconds must be > 0, got 0.0"


@pytest.mark.slow
def test_fresh_redoes_the_tuning_and_the_meta_training(tmp_path) -> None:
    learned = {
        "task": "quadratic",
        "optimizer": "lopt_quadratic",
        "steps": BUDGET,
        "meta_train": {
            "outer_steps": 2,
            "problems": 2,
            "parallel": "loop",
            "horizon": 20,
            "outer_batches": 1,
            "min_unroll": 3,
            "max_unroll": 5,
            # a curriculum: one whole-run ES step first, whose checkpoint the stage above starts at
            "before": [
                {
                    "outer_steps": 1,
                    "problems": 2,
                    "parallel": "loop",
                    "horizon": 20,
                    "outer_batches": 1,
                    "estimator": "es",
                    "schedule": "constant",
                    "unroll_length": 20,
                }
            ],
        },
    }
    runs = [
        {**r, "task_cfg": {"dim": 8}}
        | ({"tuning": {**r["tuning"], "trials": 32}} if "tuning" in r else {})
        for r in comparison_runs(learned)
        if r["tags"]["comparison"] == "train"
    ]
    suite = suite_config(tmp_path, runs, report="comparison")
    out = tmp_path / "fresh-run" / "results.csv"
    frame = run_suite(
        SuiteRun(suite=suite, seeds=1, out=out, fresh=True), log=lambda _m: None
    ).frame
    fresh = tmp_path / "fresh-run" / "fresh"
    assert (fresh / "optuna.db").is_file()
    checkpoint = fresh / "meta" / "lopt_quadratic" / "lopt.safetensors"
    assert checkpoint.is_file()
    assert load_lopt_checkpoint(checkpoint).meta_training["task_cfg"] == {"dim": 8}
    first = fresh / "meta" / "lopt_quadratic" / "stage0" / "lopt.safetensors"
    assert load_lopt_checkpoint(first).meta_training["estimator"] == "es"
    assert load_lopt_checkpoint(checkpoint).meta_training["init_from"] == str(first)
    assert set(frame.task_cfg.map(lambda text: json.loads(text)["dim"])) == {8}
    learned_rows = frame[frame.optimizer == "lopt"]
    assert set(learned_rows.hparams) == {canonical_json({"checkpoint": str(checkpoint)})}
    assert not (tmp_path / "optuna.db").exists()  # the stored studies were not used


def test_fresh_needs_a_trial_count(tmp_path) -> None:
    runs = [{"task": "quadratic", "optimizer": "sgd", "steps": BUDGET, "tuned": True}]
    suite = suite_config(tmp_path, runs)
    with pytest.raises(UsageError, match=r"fresh=true needs tuning\.trials"):
        run_suite(SuiteRun(suite=suite, seeds=1, out=tmp_path / "x.csv", fresh=True), log=print)


@pytest.mark.slow
def test_the_paper_suite_resolves_with_the_shipped_studies_and_checkpoints() -> None:
    """Every run of `lopt suite name=paper` finds its tuned hyperparameters in the committed
    studies (the same trials and budget for every baseline of a task) and its learned
    optimizer among the shipped checkpoints, meta-trained on the entry's task and objective (or,
    for a transfer entry, on the task its ``transfer`` tag names) as its ``meta_train`` says."""
    from harness.cli import composed
    from harness.overrides import parse_overrides
    from harness.plan import resolve_plans
    from harness.registry import OPTIMIZERS, TASKS
    from harness.suite import check_fair_tuning, entry_plans
    from tasks.base import task_config

    (cfg,) = composed("suite", parse_overrides(["suite=paper"]), multirun=False)
    settings = SuiteRun(suite=cfg.suite, seeds=cfg.suite.seeds)
    entries = suite_entries(cfg.suite)
    plans = [plan for entry in entries for plan in entry_plans(settings, entry)]
    planned = resolve_plans(plans)
    check_fair_tuning("paper", plans)
    assert len(plans) == len(entries) * 5 and len({p.run_id for p in planned}) == len(plans)
    for entry in entries:
        if entry.tuned:
            continue
        meta = OPTIMIZERS.get(entry.optimizer).factory.provenance["meta_training"]
        assert meta["objective"] == entry.tags["comparison"]
        if "transfer" in entry.tags:  # from another task, or from a task family
            trained_on = meta.get("task") or meta["family"]
            assert trained_on == entry.tags["transfer"] != entry.task
            continue
        assert meta["task"] == entry.task
        factory = TASKS.get(entry.task).factory
        assert task_config(factory, meta["task_cfg"]) == task_config(factory, entry.task_cfg)
        # fresh=true would remake this checkpoint: its settings, to the outer step it was taken at
        wanted = {k: v for k, v in entry.meta_train.items() if k != "before"}
        made = {**meta, "outer_steps": meta["outer_step"]}
        assert {k: made[k] for k in wanted} == wanted


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        n
        for n in __import__("harness.config", fromlist=["list_suites"]).list_suites()
        if "/optuna.db" in (Path("harness/conf/suite") / f"{n}.yaml").read_text()
        and Path(f"results/{n}/results.csv").is_file()
    ],
)
def test_every_suite_on_the_shipped_studies_resolves(name: str) -> None:
    """A suite with tuned baselines whose results are committed finds every study it names in
    the committed storage (a study moved out of the database breaks `lopt suite`), its studies
    are fairly tuned, and its checkpoints exist."""
    from harness.cli import composed
    from harness.overrides import parse_overrides
    from harness.plan import resolve_plans
    from harness.suite import check_fair_tuning, entry_plans

    (cfg,) = composed("suite", parse_overrides([f"suite={name}"]), multirun=False)
    settings = SuiteRun(suite=cfg.suite, seeds=cfg.suite.seeds)
    plans = [plan for entry in suite_entries(cfg.suite) for plan in entry_plans(settings, entry)]
    resolve_plans(plans)
    check_fair_tuning(name, plans)
    from optimizers.checkpoint import resolve_checkpoint

    for plan in plans:
        if "checkpoint" in plan.hparams:  # a file or a shipped name
            assert resolve_checkpoint(plan.hparams["checkpoint"]).is_file()


def test_reuse_runs_only_the_entries_added_since(tmp_path, capsys) -> None:
    """``reuse=true``: the runs already in the results file (same ids) are kept, byte for byte
    in their rows, and only the new entry's runs are run; an entry dropped from the suite is
    dropped from the file; reuse with fresh is refused in one line."""
    out = tmp_path / "toy" / "results.csv"
    runs = [{"task": "quadratic", "optimizer": "sgd", "steps": BUDGET}]
    lines: list[str] = []
    first = run_suite(
        SuiteRun(suite=suite_config(tmp_path, runs), seeds=2, out=out, report=False),
        log=lines.append,
    ).frame
    added = [*runs, {"task": "quadratic", "optimizer": "adam", "steps": BUDGET}]
    lines.clear()
    capsys.readouterr()
    second = run_suite(
        SuiteRun(suite=suite_config(tmp_path, added), seeds=2, out=out, report=False, reuse=True),
        log=lines.append,
    ).frame
    assert any("reuse: 2 of the suite's 4 runs are kept" in line for line in lines)
    ran = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(ran) == 2 and all(" adam seed " in line for line in ran)
    assert second.run_id.nunique() == 4
    kept = second[second.optimizer == "sgd"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first.reset_index(drop=True), check_dtype=False)
    dropped = run_suite(
        SuiteRun(
            suite=suite_config(tmp_path, added[1:]), seeds=2, out=out, report=False, reuse=True
        ),
        log=lambda _m: None,
    ).frame
    assert set(dropped.optimizer) == {"adam"} and dropped.run_id.nunique() == 2
    for extra, message in (
        ({"fresh": True}, "and fresh=true"),
        ({"resume": False}, "resume=false"),
    ):
        with pytest.raises(UsageError, match=rf"^reuse=true keeps earlier runs.*{message}"):
            run_suite(
                SuiteRun(suite=suite_config(tmp_path, runs), seeds=2, out=out, reuse=True, **extra),
                log=lambda _m: None,
            )
