"""The cost of tuning (harness.results.tuning_cost): best of k trials, with known answers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.results.tuning_cost import (
    best_of_k_curve,
    best_of_k_quantile,
    expected_best_of_k,
    ks_for,
    trials_to_match,
    tuning_cost,
)


def test_expected_best_of_k_on_four_values():
    values = [3.0, 1.0, 2.0, 4.0]
    assert expected_best_of_k(values, 1) == pytest.approx(2.5)
    assert expected_best_of_k(values, 2) == pytest.approx((1 * 3 + 2 * 2 + 3 * 1) / 6)
    assert expected_best_of_k(values, 3) == pytest.approx((1 * 3 + 2 * 1) / 4)
    assert expected_best_of_k(values, 4) == 1.0


def test_best_of_k_matches_enumerating_every_subset():
    values = list(np.random.default_rng(0).normal(size=9))
    for k in range(1, 10):
        mins = [min(c) for c in itertools.combinations(values, k)]
        assert expected_best_of_k(values, k) == pytest.approx(np.mean(mins))
        for q in (0.1, 0.5, 0.9):
            exact = best_of_k_quantile(values, k, q)
            assert np.mean(np.array(mins) <= exact) >= q - 1e-12
            smaller = [v for v in sorted(values) if v < exact]
            if smaller:
                assert np.mean(np.array(mins) <= smaller[-1]) < q


def test_failed_trials_count_as_infinite():
    values = [1.0, 2.0, math.nan]
    assert expected_best_of_k(values, 1) == math.inf
    assert expected_best_of_k(values, 2) == pytest.approx(4 / 3)  # pairs' bests: 1, 1, 2
    assert expected_best_of_k(values, 3) == 1.0
    assert best_of_k_quantile(values, 1, 0.1) == 1.0
    assert best_of_k_quantile(values, 1, 0.9) == math.inf


def test_ks_and_the_curve():
    assert ks_for(1) == [1]
    assert ks_for(5) == [1, 2, 4, 5]
    assert ks_for(8) == [1, 2, 4, 8]
    curve = best_of_k_curve([3.0, 1.0, 2.0, 4.0, 0.5])
    assert curve["k"].tolist() == [1, 2, 4, 5]
    assert curve["prefix"].tolist() == [3.0, 1.0, 1.0, 0.5]
    assert curve["expected"].is_monotonic_decreasing
    assert (curve["low"] <= curve["expected"]).all() and (curve["expected"] <= curve["high"]).all()
    assert trials_to_match(curve, 1.0) == 4
    assert trials_to_match(curve, 0.4) is None
    with pytest.raises(ValueError, match="k must be between 1"):
        expected_best_of_k([1.0], 2)


def test_tuning_cost_reads_the_studies_of_the_tuned_runs(tmp_path: Path):
    import optuna
    from test_profiles import tidy

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="t-sgd", storage=storage)
    for value in (3.0, 1.0, 2.0, 4.0, 9.0):
        study.tell(study.ask(), value)
    tags = json.dumps({"comparison": "train", "study": "t-sgd", "trials": 4})
    frame = pd.concat(
        [
            tidy("s0", "sgd", 0, [4, 1.0], "train").assign(tags=tags),
            tidy("l0", "lopt", 0, [4, 1.4], "train"),
            tidy("l1", "lopt", 1, [4, 1.6], "train"),
        ],
        ignore_index=True,
    )
    curves, matches = tuning_cost({"train": frame}, storage, lambda name: name != "lopt")
    assert curves["k"].tolist() == [1, 2, 4]  # the study's first 4 counted trials
    assert curves["expected"].tolist() == pytest.approx([2.5, 10 / 6, 1.0])
    row = matches.iloc[0]
    assert (row["learned"], row["baseline"], row["trials"]) == ("lopt", "sgd", 4)
    assert row["learned_loss"] == pytest.approx(1.5)
    assert row["trials_to_match"] == 4  # 2 trials expect 1.67 > 1.5
    assert row["tuned_best"] == 1.0


def test_the_comparison_report_writes_the_profiles_and_the_tuning_cost(tmp_path: Path):
    import optuna
    from test_profiles import tidy

    from harness.results.comparison import build_comparison_report

    study = optuna.create_study(study_name="t-sgd", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    for value in (3.0, 1.0, 2.0, 4.0):
        study.tell(study.ask(), value)
    tuned = json.dumps({"comparison": "train", "study": "t-sgd", "trials": 4})
    runs = [(seed, split) for seed in (0, 1) for split in ("train", "valid", "test")]
    frame = pd.concat(
        [
            *(tidy(f"s{s}", "sgd", s, [4, 2.0, 1.0], p).assign(tags=tuned) for s, p in runs),
            *(tidy(f"l{s}", "lopt_mnist5k_train", s, [4, 1.0, 0.9], p) for s, p in runs),
        ],
        ignore_index=True,
    )
    written = {p.name for p in build_comparison_report(frame, tmp_path)}
    assert {"profiles.png", "profiles.csv", "tuning_cost.png", "tuning_cost.csv"} <= written
    profile = pd.read_csv(tmp_path / "profiles.csv").set_index("optimizer")
    assert profile.loc["lopt_mnist5k_train", "score"] == 1.0  # 1 s against sgd's 2 s
    assert profile.loc["sgd", "score"] == pytest.approx((4 - 2) / 3)
    text = (tmp_path / "summary.md").read_text()
    assert "## Performance profiles" in text and "## Tuning cost" in text
    # lopt's final train loss 0.9 is below the study's best (1.0): no k is enough
    assert "> 4" in text
