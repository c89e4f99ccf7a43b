"""lopt evaluate-family: its statistics on inputs with known answers, a tiny end-to-end run
(with resume), and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.meta.family import evalstats
from harness.meta.family.evalset import EVAL_FIRST_SEED, EvalSample, check_disjoint
from harness.results.io import check_values
from harness.results.schema import COLUMNS

CHECKPOINT = "results/meta/nominal_mlp_mlp_mix_pes128/lopt.safetensors"
STEPS = np.array([10, 20, 30, 40])


def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 tasks, rows: Adam lr A, Adam lr B, a candidate; 2 seeds; 4 checkpoints.

    Task 0: Adam B is tuned (final 1.0), reached at step 40; the candidate reaches 1.0 at 20
    and costs 2x per step: speedup 2 in steps, 1 in seconds. Test: candidate 0.5 below.
    Task 1: Adam A is tuned (final 0.5); the candidate never gets below 0.8: speedup 0.
    """
    curves = np.empty((2, 3, 2, 4))
    curves[0, 0] = [3, 2.5, 2.0, 1.5]
    curves[0, 1] = [3, 2.0, 1.5, 1.0]
    curves[0, 2] = [2, 1.0, 0.9, 0.8]
    curves[1, 0] = [2, 1.0, 0.7, 0.5]
    curves[1, 1] = [3, 2.0, 1.5, 1.2]
    curves[1, 2] = [3, 2.0, 1.0, 0.8]
    finals = np.empty((2, 3, 2, 3))
    finals[..., 0] = curves[..., -1]
    finals[..., 1] = finals[..., 0] + 0.1  # valid: same order as train
    finals[..., 2] = [[[2.0], [1.5], [1.0]], [[1.0], [2.0], [1.5]]]
    costs = np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    return curves, finals, costs


def test_first_reach_is_the_first_checkpoint_at_or_below_the_target() -> None:
    curves = np.array([[3.0, 2.0, 1.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    assert evalstats.first_reach(curves, np.array([2.0, 2.0]), STEPS).tolist() == [20, math.inf]


def test_task_table_and_headline_have_the_known_answers() -> None:
    curves, finals, costs = synthetic()
    table = evalstats.task_table(curves, finals, costs, STEPS, grid=2)
    assert table.tuned_train.tolist() == [1, 0]
    assert table.target.tolist() == [1.0, 0.5]
    assert table.steps_to_target[:, 2].tolist() == [20, math.inf]
    assert table.speedup_steps[:, 2].tolist() == [2.0, 0.0]
    assert table.speedup_wall[:, 2].tolist() == [1.0, 0.0]
    assert table.test_diff[:, 2].tolist() == [-0.5, 0.5]
    head = evalstats.headline(table, 2)
    assert head["frac_faster_steps"] == 0.5
    assert head["frac_faster_wall"] == 0.0  # 1.0x in seconds is not faster
    assert head["median_speedup_steps"] == 1.0
    assert head["frac_test_lower"] == 0.5
    # task 0's tuned Adam against itself: speedup 1
    assert table.speedup_steps[0, 1] == 1.0


def test_bootstrap_over_identical_seeds_collapses_to_the_value() -> None:
    curves, finals, costs = synthetic()
    table = evalstats.task_table(curves, finals, costs, STEPS, grid=2)
    ci = evalstats.bootstrap(curves, finals, costs, STEPS, 2, [2], resamples=20)
    for name, value in evalstats.headline(table, 2).items():
        assert ci[2][name] == (value, value)


def test_bootstrap_interval_widens_with_seed_noise() -> None:
    curves, finals, costs = synthetic()
    finals = finals.copy()
    finals[0, 2, :, 2] = [0.0, 2.0]  # seed-dependent test loss: mean 1.0 (diff -0.5)
    ci = evalstats.bootstrap(curves, finals, costs, STEPS, 2, [2], resamples=200)
    low, high = ci[2]["median_test_diff"]
    assert low < 0 < high


def test_a_run_that_ends_at_the_clip_is_diverged() -> None:
    from harness.meta.family.evalreport import with_status

    frame = pd.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "b"],
            "split": ["train", "train", "test", "train", "train"],
            "step": [10, 20, 20, 10, 20],
            "value": [10.0, 1.0, 10.0, 1.0, 10.0],
            "status": "",
        }
    )
    assert with_status(frame)["status"].tolist() == ["completed"] * 3 + ["diverged"] * 2


def test_seed_interval() -> None:
    assert evalstats.seed_interval(np.array([0.2, 0.2, 0.2])) == pytest.approx((0.2, 0.2, 0.2))
    mean, low, high = evalstats.seed_interval(np.array([-1.0, 1.0, -1.0, 1.0]))
    assert mean == 0.0 and low < 0 < high


def test_the_sample_is_disjoint_from_training_and_the_judge() -> None:
    sample = EvalSample("mlp_mix", 3, seeds=2)
    assert sample.members() == [EVAL_FIRST_SEED, EVAL_FIRST_SEED + 1, EVAL_FIRST_SEED + 2]
    assert sample.task(0).seed == EVAL_FIRST_SEED
    check_disjoint(32)
    with pytest.raises(UsageError, match="reaches the evaluation sample"):
        check_disjoint(200_000)


TINY = [
    f"checkpoint={CHECKPOINT}",
    "tasks=2",
    "seeds=2",
    "steps=20",
    "checkpoints=4",
    "timing_steps=3",
    "bootstrap=20",
    "progress=false",
]


def test_tiny_end_to_end_run_and_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOPT_NOMINAL_COMPILE", "0")  # seconds, not a compile
    out = tmp_path / "eval"
    assert main(["evaluate-family", *TINY, f"out={out}", "max_seconds=0.001"]) == 0
    parts = sorted((out / "parts").glob("*.csv.gz"))
    assert len(parts) == 1 and not (out / "summary.md").exists()  # stopped after one task
    first = parts[0].stat().st_mtime_ns
    assert main(["evaluate-family", *TINY, f"out={out}"]) == 0
    assert parts[0].stat().st_mtime_ns == first  # the finished task was not run again
    frame = pd.read_csv(out / "evaluation.csv.gz")
    # 2 tasks x (7 Adam rates + learned + initial) x 2 seeds x (4 checkpoints + valid + test)
    assert len(frame) == 2 * 9 * 2 * 6
    assert set(frame["split"]) == {"train", "valid", "test"}
    assert list(frame.columns) == list(COLUMNS)
    check_values(frame, out / "evaluation.csv.gz")  # the results table's own value checks
    assert frame["value"].between(0, 10).all()
    per_task = pd.read_csv(out / "per_task.csv")
    assert set(per_task["candidate"]) == {"learned", "initial", "adam default"}
    per_run = pd.read_csv(out / "per_run.csv")
    assert len(per_run) == 2 * 9 * 2
    tuned = per_run[per_run["steps_to_target"] <= 20]
    assert len(tuned) >= 1  # tuned Adam's own seeds reach the mean target on some seed
    summary = (out / "summary.md").read_text()
    assert "faster than per-task-tuned Adam" in summary and ("met" in summary)
    assert (out / "speedups.png").stat().st_size > 0
    initial = frame[frame["hparams"].str.contains('"theta":"initial"')]
    assert len(initial) == 2 * 2 * 6 and (initial["optimizer"] == "nominal_mlp").all()


def test_help_lists_every_key(capsys) -> None:
    from harness.settings.evaluate_family import FamilyEvaluateConfig

    assert main(["evaluate-family", "--help"]) == 0
    text = capsys.readouterr().out
    assert "`lopt evaluate-family` keys and their defaults:" in text
    for name in FamilyEvaluateConfig.__dataclass_fields__:
        assert f"  {name}=" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["tasks=0"], "tasks must be an integer >= 1"),
        (["lr_grid=[0.001]"], "lr_grid must hold at least 3"),
        (["adam_default=0.002"], "adam_default (0.002) must be one of lr_grid"),
        (["family=nope"], "family must be one of"),
        (["checkpoint=missing.safetensors"], "missing.safetensors"),
        (["steps=3"], "steps (3) must be >= checkpoints"),
        (["colour=red"], "takes no option 'colour'"),
        (["tasks=1,2"], "comma list"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message) -> None:
    out = tmp_path / "eval"
    base = [a for a in TINY if not any(a.startswith(x.split("=")[0] + "=") for x in args)]
    assert main(["evaluate-family", *base, *args, f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_another_evaluations_folder_is_refused(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["evaluate-family", *TINY, f"out={out}"]) == 2
    assert "other files" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
