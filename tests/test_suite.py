"""Suites: tuned entries, tags, optional tasks, fresh=true, and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.config import SuiteFile, suite_entries
from harness.errors import DatasetUnavailableError, UsageError
from harness.meta.checkpoint import load_lopt_checkpoint
from harness.results.schema import canonical_json
from harness.suite import SuiteRun, run_suite
from harness.tuning.tuner import TuneSettings, tune

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
    frame = run_suite(SuiteRun(suite=suite, seeds=2, out=out), log=lambda _m: None)
    assert frame.run_id.nunique() == 12
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


def test_unavailable_optional_tasks_are_skipped_with_a_notice(tmp_path, monkeypatch) -> None:
    import harness.suite as suite_module

    real = suite_module.create_task

    def create_task(name, **cfg):
        if name == "digits_mlp":
            raise DatasetUnavailableError("digits not here: install it")
        return real(name, **cfg)

    monkeypatch.setattr(suite_module, "create_task", create_task)
    runs = [
        {"task": "quadratic", "optimizer": "sgd", "steps": 20},
        {"task": "digits_mlp", "optimizer": "sgd", "steps": 20},
    ]
    notices: list[str] = []
    suite = suite_config(tmp_path, runs, optional_tasks=["digits_mlp"])
    frame = run_suite(
        SuiteRun(suite=suite, seeds=1, out=tmp_path / "r.csv", report=False), log=notices.append
    )
    assert set(frame.task) == {"quadratic"}
    assert any("skipping digits_mlp: digits not here" in n for n in notices)
    only_missing = suite_config(tmp_path, runs[1:], optional_tasks=["digits_mlp"])
    with pytest.raises(UsageError, match="no run is left"):
        run_suite(SuiteRun(suite=only_missing, seeds=1, out=tmp_path / "s.csv"), log=print)


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
        },
    }
    runs = [
        {**r, "task_cfg": {"dim": 8}}
        for r in comparison_runs(learned)
        if r["tags"]["comparison"] == "train"
    ]
    suite = suite_config(tmp_path, runs, report="comparison")
    out = tmp_path / "fresh-run" / "results.csv"
    frame = run_suite(SuiteRun(suite=suite, seeds=1, out=out, fresh=True), log=lambda _m: None)
    fresh = tmp_path / "fresh-run" / "fresh"
    assert (fresh / "optuna.db").is_file()
    checkpoint = fresh / "meta" / "lopt_quadratic" / "lopt.pt"
    assert checkpoint.is_file()
    assert load_lopt_checkpoint(checkpoint).meta_training["task_cfg"] == {"dim": 8}
    assert set(frame.task_cfg.map(lambda text: json.loads(text)["dim"])) == {8}
    learned_rows = frame[frame.optimizer == "lopt"]
    assert set(learned_rows.hparams) == {canonical_json({"checkpoint": str(checkpoint)})}
    assert not (tmp_path / "optuna.db").exists()  # the stored studies were not used


def test_fresh_needs_a_trial_count(tmp_path) -> None:
    runs = [{"task": "quadratic", "optimizer": "sgd", "steps": BUDGET, "tuned": True}]
    suite = suite_config(tmp_path, runs)
    with pytest.raises(UsageError, match=r"fresh=true needs tuning\.trials"):
        run_suite(SuiteRun(suite=suite, seeds=1, out=tmp_path / "x.csv", fresh=True), log=print)


def test_the_paper_suite_resolves_with_the_shipped_studies_and_checkpoints() -> None:
    """Every run of `lopt suite name=paper` finds its tuned hyperparameters in the committed
    studies (the same trials and budget for every baseline of a task) and its learned
    optimizer among the shipped checkpoints, meta-trained on the entry's task and objective."""
    from harness.cli import composed
    from harness.plan import check_plans
    from harness.registry import OPTIMIZERS, TASKS
    from harness.suite import check_fair_tuning, entry_plans
    from tasks.base import task_config

    (cfg,) = composed("suite", ["suite=paper"], multirun=False)
    settings = SuiteRun(suite=cfg.suite, seeds=cfg.suite.seeds)
    entries = suite_entries(cfg.suite)
    plans = [plan for entry in entries for plan in entry_plans(settings, entry)]
    check_plans(plans)
    check_fair_tuning("paper", plans)
    assert len(plans) == len(entries) * 5 and len({p.run_id() for p in plans}) == len(plans)
    for entry in entries:
        if entry.tuned:
            continue
        meta = OPTIMIZERS.get(entry.optimizer).factory.provenance["meta_training"]
        assert meta["task"] == entry.task and meta["objective"] == entry.tags["comparison"]
        factory = TASKS.get(entry.task).factory
        assert task_config(factory, meta["task_cfg"]) == task_config(factory, entry.task_cfg)
        assert meta["estimator"] == "merged"
