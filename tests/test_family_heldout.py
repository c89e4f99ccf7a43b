"""The held-out judge's per-task values and the estimator comparison's summary statistics."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
from benchmark_modules import load_benchmark
from family_runs import TINY_FAMILY_RUN

from harness.meta.family.heldout import HELDOUT_METRICS, HeldOutSet
from harness.meta.family.trainer import FamilyTrainer
from harness.settings.family import coerce_family_config


def test_per_task_values_average_to_what_the_judge_logs(tmp_path: Path) -> None:
    trainer = FamilyTrainer(coerce_family_config({**TINY_FAMILY_RUN, "out": str(tmp_path)}))
    judged = HeldOutSet(trainer.schedule, 3)
    values = judged.per_task(trainer.learner, trainer.theta)
    assert values.shape == (3, len(HELDOUT_METRICS)) and torch.isfinite(values).all()
    means = judged.evaluate(trainer.learner, trainer.theta)
    for m, name in enumerate(HELDOUT_METRICS):
        assert math.isclose(float(values[:, m].mean()), means[name], rel_tol=1e-9, abs_tol=1e-12)
    other = judged.per_task(trainer.learner, trainer.theta + 0.5)
    assert not torch.equal(other, values)  # the values are theta's, task by task


@pytest.fixture()
def comparison(monkeypatch: pytest.MonkeyPatch):
    return load_benchmark("family_estimator_comparison.py", monkeypatch)


def test_the_late_level_averages_the_second_half_of_the_common_budget(comparison) -> None:
    cpu = [*range(0, 101, 10), 200]  # the judgement at 200 CPU-s is past the common budget
    rows = [("a", c, c / 3600, "heldout_loss", float(c) - 30.0) for c in cpu]
    rows += [("b", c, c / 3600, "heldout_loss", 99.0) for c in cpu]  # another estimator
    rows += [("a", 60, 60 / 3600, "heldout_loss_se", 7.0)]  # another metric
    frame = pd.DataFrame(rows, columns=["estimator", "cpu_seconds", "cpu_hours", "metric", "value"])
    level = comparison.late_level(frame, "a", budget=100.0)
    late = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0]  # CPU-s 50-100, each minus 30
    assert level["late_heldout_loss"] == pytest.approx(45.0)
    assert level["late_judgements"] == len(late)
    blocks = [25.0, 40.0, 50.0, 60.0, 70.0]  # 5 consecutive blocks: [20, 30], [40], ...
    assert level["late_heldout_loss_se"] == pytest.approx(statistics.stdev(blocks) / math.sqrt(5))
    assert level["lowest_heldout_loss"] == -30.0 and level["lowest_at_cpu_hours"] == 0.0


def test_too_few_late_judgements_give_no_standard_error(comparison) -> None:
    rows = [("a", c, c / 3600, "heldout_loss", 1.0) for c in (10, 60, 90)]
    frame = pd.DataFrame(rows, columns=["estimator", "cpu_seconds", "cpu_hours", "metric", "value"])
    level = comparison.late_level(frame, "a", budget=100.0)
    assert level["late_heldout_loss"] == 1.0 and math.isnan(level["late_heldout_loss_se"])
