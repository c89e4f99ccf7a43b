"""The meta-training report: the flattening verdict and the files it writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.errors import UsageError
from harness.meta.report import build_meta_report, convergence


def synthetic_log(losses: list[float], loss: str = "mean") -> pd.DataFrame:
    rows = []
    for step, value in enumerate(losses, start=1):
        rows += [
            (step, "outer_loss", value),
            (step, "outer_loss_smoothed", value),
            (step, "cpu_seconds", 36.0 * step),
            (step, "inner_steps", 100.0 * step),
        ]
    rows += [(0, "heldout_train_loss", 1.0), (len(losses), "heldout_train_loss", 0.1)]
    frame = pd.DataFrame(rows, columns=["outer_step", "metric", "value"])
    return frame.assign(run_id="meta-test", task="quadratic", learner="mlp", loss=loss)


@pytest.mark.parametrize(
    ("losses", "loss", "verdict"),
    [
        ([1.0 / (1 + i) for i in range(100)], "mean", "still falling"),
        ([1.0] * 50 + [0.5] * 50, "mean", "flattened"),
        ([0.5] * 90 + [0.6] * 10, "mean", "rising"),
        ([-5.0 - 0.0001 * i for i in range(100)], "log", "flattened"),
        ([-5.0 - 0.01 * i for i in range(100)], "log", "still falling"),
        ([1.0] * 10, "mean", "too short"),
        # Noise of +-0.1 around a constant 1.0: a 10% change between the tenths is no trend.
        (
            [1.0 + 0.1 * (-1) ** i + (0.1 if i >= 95 else 0.0) for i in range(100)],
            "mean",
            "flattened within noise",
        ),
        # The same change in tenths of 3 steps: too few to judge the noise by.
        ([1.0 + 0.1 * (-1) ** i + (0.1 if i >= 27 else 0.0) for i in range(30)], "mean", "rising"),
        (
            [1.0 + 0.01 * (-1) ** i + (0.1 if i >= 90 else 0.0) for i in range(100)],
            "mean",
            "rising",
        ),
    ],
)
def test_the_verdict_compares_the_last_tenth_with_the_tenth_before(
    losses: list[float], loss: str, verdict: str
) -> None:
    summary = convergence(synthetic_log(losses, loss))
    assert summary["verdict"] == verdict and summary["outer_steps"] == len(losses)
    assert summary["cpu_hours"] == pytest.approx(len(losses) / 100)
    assert summary["heldout_train_loss_best"] == 0.1


def test_the_report_writes_curves_and_a_summary(tmp_path: Path) -> None:
    synthetic_log([1.0 / (1 + i) for i in range(40)]).to_csv(tmp_path / "meta_log.csv")
    written = build_meta_report(tmp_path, tmp_path / "report")
    assert [p.name for p in written] == ["meta_curves.png", "meta_summary.md"]
    assert "still falling" in (tmp_path / "report" / "meta_summary.md").read_text()
    with pytest.raises(UsageError, match="holds no meta-training log"):
        build_meta_report(tmp_path / "nothing")
