"""The runner and its timing contract (fake clock), divergence, budgets and determinism."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd
import pytest
import torch

from harness.errors import UsageError
from harness.registry import create_optimizer, create_task
from harness.results.schema import COLUMNS, SPLIT_TRAIN_BATCH
from harness.runner import run
from harness.timing import Stopwatch
from optimizers.base import OptState, Params, TorchOptimizer, learning_rate
from optimizers.sgd import SGD
from tasks.base import Batch
from tasks.quadratic import Quadratic


class FakeClock:
    """A clock that only moves when told to, recording every read and sync."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def __call__(self) -> float:
        self.events.append("clock")
        return self.now

    def sync(self) -> None:
        self.events.append("sync")

    def advance(self, seconds: float) -> None:
        self.now += seconds


LOSS_COST, UPDATE_COST, BATCH_COST, EVAL_COST = 1.0, 0.5, 10.0, 100.0


class ClockedQuadratic(Quadratic):
    """The quadratic task, with each piece of work advancing a fake clock by a known amount."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(noise=0.1)
        self.clock = clock

    def loss(self, params: Params, batch: Batch) -> torch.Tensor:
        self.clock.advance(LOSS_COST)
        return super().loss(params, batch)

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        for batch in super().batches(split, seed):
            self.clock.advance(BATCH_COST)
            yield batch

    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        self.clock.advance(EVAL_COST)
        return super().evaluate(params, split)


class ClockedSGD(SGD):
    clock: FakeClock

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        self.clock.advance(UPDATE_COST)
        return super().update(grads, state, params)


@pytest.fixture
def clocked() -> tuple[FakeClock, ClockedQuadratic, ClockedSGD, Stopwatch]:
    clock = FakeClock()
    optimizer = ClockedSGD(lr=0.1)
    optimizer.clock = clock
    return clock, ClockedQuadratic(clock), optimizer, Stopwatch(clock=clock, sync=clock.sync)


def test_timed_total_is_the_sum_of_timed_sections_only(clocked) -> None:
    """Batches, evaluation and warm-up advance the clock too, but only gradient + update count."""
    clock, task, optimizer, stopwatch = clocked
    result = run(
        task, optimizer, steps=12, eval_every=4, warmup_steps=3, stopwatch=stopwatch, log_every=1
    )
    per_step = LOSS_COST + UPDATE_COST
    assert result.train_seconds == pytest.approx(12 * per_step)
    assert clock.now > 12 * (per_step + BATCH_COST) + 4 * EVAL_COST  # untimed work happened
    frame = result.frame()
    evals = frame[(frame.split == "train") & (frame.metric == "loss")]
    assert list(evals.step) == [0, 4, 8, 12]
    assert list(evals.wall_time_s) == pytest.approx([s * per_step for s in (0, 4, 8, 12)])
    batch_rows = frame[frame.split == SPLIT_TRAIN_BATCH]
    assert list(batch_rows.wall_time_s) == pytest.approx([s * per_step for s in range(1, 13)])


def test_the_warm_up_trains_on_copies_and_evaluates_nothing() -> None:
    """Each whole-split evaluation is one of the run's own (steps 0, 4, 8, 12): the warm-up's
    three steps add none (on the language model one costs as much as 128 steps)."""
    evaluated: list[str] = []

    class CountingQuadratic(Quadratic):
        def evaluate(self, params: Params, split: str) -> dict[str, float]:
            evaluated.append(split)
            return super().evaluate(params, split)

    run(CountingQuadratic(), "sgd", {"lr": 0.1}, steps=12, eval_every=4, warmup_steps=3)
    splits = set(evaluated)
    assert splits and len(evaluated) == 4 * len(splits)


def test_every_clock_read_is_preceded_by_a_sync(clocked) -> None:
    clock, task, optimizer, stopwatch = clocked
    run(task, optimizer, steps=5, stopwatch=stopwatch)
    assert clock.events.count("clock") == 2 * 5
    assert clock.events == ["sync", "clock"] * 10  # start and stop of each of 5 steps


def test_time_budget_stops_the_run_on_timed_seconds(clocked) -> None:
    _clock, task, optimizer, stopwatch = clocked
    result = run(task, optimizer, steps=100, max_seconds=10.0, stopwatch=stopwatch, eval_every=50)
    # 1.5 s per timed step: the 7th step brings the total to 10.5 >= 10.
    assert result.status == "time_limit"
    assert result.steps_done == 7
    frame = result.frame()
    assert (frame.status == "time_limit").all()
    assert 7 in set(frame[frame.split == "test"].step)  # evaluated where it stopped


def test_divergence_ends_the_run_and_keeps_its_rows() -> None:
    """lr above 2 / lambda_max makes gradient descent on the quadratic blow up."""
    result = run("quadratic", "sgd", {"lr": 2.5}, steps=500, eval_every=100)
    assert result.status == "diverged"
    assert 1 < result.steps_done < 500
    frame = result.frame()
    assert (frame.status == "diverged").all()
    assert {0, result.steps_done} <= set(frame[frame.split == "train"].step)


def test_non_finite_loss_is_divergence_even_without_threshold() -> None:
    result = run("quadratic", "sgd", {"lr": 3.0}, steps=2000, divergence_factor=None)
    assert result.status == "diverged"
    assert not math.isfinite(result.final(SPLIT_TRAIN_BATCH))


def test_a_converging_run_completes_with_evaluations_at_the_right_steps() -> None:
    result = run("quadratic", "sgd", {"lr": 0.5}, steps=50, eval_every=20, log_every=10)
    frame = result.frame()
    assert result.status == "completed" and result.steps_done == 50
    assert list(frame.columns) == list(COLUMNS)
    for split in ("train", "valid", "test"):
        assert list(frame[frame.split == split].step) == [0, 20, 40, 50]
    assert list(frame[frame.split == SPLIT_TRAIN_BATCH].step) == [10, 20, 30, 40, 50]
    assert result.final("train") < frame[(frame.split == "train") & (frame.step == 0)].value.item()
    row = frame.iloc[0]
    assert row.hparams == '{"lr":0.5,"weight_decay":0.0}'
    assert row.torch_version == torch.__version__ and row.threads == torch.get_num_threads()
    assert row.device.startswith("cpu")


@pytest.mark.slow
def test_runs_are_deterministic_and_warm_up_does_not_change_them() -> None:
    task = create_task("digits_mlp")

    def values(**kwargs) -> pd.Series:
        frame = run(task, "adam", {"lr": 3e-3}, steps=30, eval_every=10, **kwargs).frame()
        return frame.set_index(["step", "split", "metric"]).value

    baseline = values(seed=1, warmup_steps=0)
    pd.testing.assert_series_equal(baseline, values(seed=1, warmup_steps=3))
    assert not baseline.equals(values(seed=2, warmup_steps=0))


@pytest.mark.slow
def test_the_torch_optim_adapter_runs_in_the_runner_like_the_functional_adam() -> None:
    task = create_task("digits_mlp")
    TorchAdam = TorchOptimizer.wrap(torch.optim.Adam, learning_rate(3e-3))
    TorchAdam.name = "torch_adam"
    adapted = run(task, TorchAdam(lr=3e-3), steps=20, eval_every=10).frame()
    functional = run(task, "adam", {"lr": 3e-3}, steps=20, eval_every=10).frame()
    pick = (adapted.split == "test") & (adapted.metric == "loss")
    assert adapted[pick].value.to_numpy() == pytest.approx(
        functional[pick].value.to_numpy(), abs=1e-5
    )


def test_run_ids_identify_the_definition() -> None:
    a = run("quadratic", "sgd", {"lr": 0.1}, steps=5, seed=0)
    b = run("quadratic", "sgd", {"lr": 0.1}, steps=5, seed=0)
    c = run("quadratic", "sgd", {"lr": 0.2}, steps=5, seed=0)
    assert a.run_id == b.run_id != c.run_id
    assert a.run_id.startswith("quadratic-sgd-s0-")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"eval_every": -1}, "eval_every must be an integer >= 1"),
        ({"max_seconds": 0.0}, "max_seconds must be > 0"),
        ({"eval_splits": ("holdout",)}, "unknown split 'holdout'"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ],
)
def test_bad_settings_fail_before_training(kwargs, message) -> None:
    with pytest.raises(UsageError, match=message):
        run("quadratic", "sgd", **kwargs)


def test_hparams_with_an_optimizer_instance_is_refused() -> None:
    with pytest.raises(UsageError, match="hparams"):
        run("quadratic", create_optimizer("sgd"), {"lr": 0.1}, steps=2)


def test_on_eval_sees_each_evaluation_and_can_stop_the_run() -> None:
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def on_eval(step: int, measured: dict[str, dict[str, float]]) -> None:
        seen.append((step, measured["valid"]["loss"]))
        if step == 20:
            raise Stop

    with pytest.raises(Stop):
        run(
            "quadratic",
            "sgd",
            {"lr": 0.1},
            steps=50,
            eval_every=10,
            on_eval=on_eval,
            eval_splits=("valid",),
        )
    assert [step for step, _ in seen] == [0, 10, 20]
    assert seen[0][1] > seen[-1][1]
