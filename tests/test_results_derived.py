"""Derived tables (harness.results.derived) on hand-built tidy frames with known numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.errors import UsageError
from harness.results.derived import (
    FINAL_AND_BEST_COLUMNS,
    SPEEDUP_COLUMNS,
    TIME_TO_TARGET_COLUMNS,
    config_labels,
    final_and_best,
    seed_summary,
    speedup,
    time_to_target,
)
from harness.results.schema import COLUMNS

NAN, INF = math.nan, math.inf
ADAM = '{"lr":0.001}'
SGD = '{"lr":0.1}'


def tidy_run(
    run_id: str,
    optimizer: str,
    seed: int,
    curves: dict[tuple[str, str], list[tuple[int, float, float]]],
    *,
    task: str = "t",
    hparams: str = "{}",
    status: str = "completed",
) -> pd.DataFrame:
    """Rows of one run; ``curves[(split, metric)]`` lists ``(step, wall_time_s, value)``."""
    rows = [
        {
            "run_id": run_id,
            "suite": "s",
            "task": task,
            "task_cfg": "{}",
            "optimizer": optimizer,
            "hparams": hparams,
            "seed": seed,
            "step": step,
            "wall_time_s": wall,
            "split": split,
            "metric": metric,
            "value": value,
            "status": status,
            "budget_steps": 30,
            "tags": "{}",
            "harness_version": "0.0",
            "schema_version": 3,
            "git_commit": "abc",
            "torch_version": "2.x",
            "device": "cpu (test)",
            "threads": 1,
            "source": "bench",
        }
        for (split, metric), points in curves.items()
        for step, wall, value in points
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def train_loss(values: list[float], walls: list[float], steps: list[int] | None = None):
    steps = steps or [0, 10, 20, 30][: len(values)]
    return {("train", "loss"): list(zip(steps, walls, values, strict=True))}


def synthetic() -> pd.DataFrame:
    """Two adam, two sgd and two diverged rmsprop runs on task ``t`` (see the tests)."""
    run_a = {
        **train_loss([4.0, 2.0, 1.0, 1.5], [0.0, 1.0, 2.0, 3.0]),
        ("train", "accuracy"): [(0, 0.0, 0.1), (10, 1.0, 0.5), (20, 2.0, 0.7), (30, 3.0, 0.6)],
        ("valid", "loss"): [(0, 0.0, 4.0), (10, 1.0, 3.0), (20, 2.0, 2.5), (30, 3.0, 2.0)],
        ("train_batch", "loss"): [(10, 1.0, 0.5), (20, 2.0, 0.25), (30, 3.0, 0.125)],
    }
    return pd.concat(
        [
            tidy_run("a", "adam", 0, run_a, hparams=ADAM),
            tidy_run("b", "adam", 1, train_loss([4.0, 3.0, 2.0, 1.0], [0, 2, 4, 6]), hparams=ADAM),
            tidy_run(
                "c", "sgd", 0, train_loss([4.0, 1.2, 0.5, 0.4], [0, 0.5, 1, 1.5]), hparams=SGD
            ),
            tidy_run("d", "sgd", 1, train_loss([4.0, 2.0, 1.25, 1.0], [0, 1, 2, 3]), hparams=SGD),
            tidy_run("e", "rmsprop", 0, train_loss([4.0, NAN], [0, 0.5]), status="diverged"),
            tidy_run(
                "f",
                "rmsprop",
                1,
                train_loss([4.0, 8.0, INF], [0, 0.25, 0.5], steps=[0, 5, 10]),
                status="diverged",
            ),
        ],
        ignore_index=True,
    )


def one(table: pd.DataFrame, **where: object) -> pd.Series:
    """The single row of ``table`` matching ``where``."""
    mask = pd.Series(True, index=table.index)
    for column, value in where.items():
        mask &= table[column] == value
    rows = table[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# --------------------------------------------------------------------------------------------
# final_and_best
# --------------------------------------------------------------------------------------------


def test_final_and_best_columns_and_rows():
    table = final_and_best(synthetic())
    assert tuple(table.columns) == FINAL_AND_BEST_COLUMNS
    # run a: train loss, train accuracy, valid loss; every other run: train loss
    assert len(table) == 3 + 5
    assert "train_batch" not in set(table["split"])
    assert list(table.loc[table["run_id"] == "a", "split"]) == ["train", "train", "valid"]


def test_final_and_best_loss_is_minimised():
    row = one(final_and_best(synthetic()), run_id="a", split="train", metric="loss")
    assert (row["final_value"], row["final_step"], row["final_wall_time_s"]) == (1.5, 30, 3.0)
    assert (row["best_value"], row["best_step"], row["best_wall_time_s"]) == (1.0, 20, 2.0)
    assert (row["optimizer"], row["hparams"], row["seed"], row["status"]) == (
        "adam",
        ADAM,
        0,
        "completed",
    )


def test_final_and_best_accuracy_is_maximised():
    row = one(final_and_best(synthetic()), run_id="a", split="train", metric="accuracy")
    assert (row["final_value"], row["final_step"]) == (0.6, 30)
    assert (row["best_value"], row["best_step"], row["best_wall_time_s"]) == (0.7, 20, 2.0)


def test_final_and_best_includes_train_batch_on_request():
    table = final_and_best(synthetic(), include_train_batch=True)
    row = one(table, run_id="a", split="train_batch")
    assert (row["final_value"], row["best_value"], row["best_step"]) == (0.125, 0.125, 30)


def test_best_is_the_earliest_of_equal_values_and_rows_may_come_unsorted():
    frame = tidy_run("r", "adam", 0, train_loss([3.0, 1.0, 1.0, 2.0], [0, 1, 2, 3]))
    row = one(final_and_best(frame.iloc[::-1]), run_id="r")
    assert (row["best_value"], row["best_step"]) == (1.0, 10)
    assert (row["final_value"], row["final_step"]) == (2.0, 30)


def test_diverged_runs_keep_non_finite_finals_and_finite_bests():
    table = final_and_best(synthetic())
    nan_run = one(table, run_id="e")
    assert math.isnan(nan_run["final_value"]) and nan_run["final_step"] == 10
    assert (nan_run["best_value"], nan_run["best_step"]) == (4.0, 0)
    inf_run = one(table, run_id="f")
    assert inf_run["final_value"] == INF and inf_run["final_step"] == 10
    assert (inf_run["best_value"], inf_run["best_step"]) == (4.0, 0)
    assert inf_run["status"] == "diverged"


def test_a_run_without_finite_values_has_nan_best():
    frame = tidy_run("z", "adam", 0, train_loss([NAN, INF], [0, 1]), status="diverged")
    row = one(final_and_best(frame), run_id="z")
    assert row["final_value"] == INF
    assert math.isnan(row["best_value"]) and math.isnan(row["best_step"])
    assert math.isnan(row["best_wall_time_s"])


def test_final_and_best_does_not_modify_its_input_and_handles_empty_frames():
    frame = synthetic()
    copy = frame.copy()
    final_and_best(frame)
    pd.testing.assert_frame_equal(frame, copy)
    empty = final_and_best(frame.iloc[:0])
    assert empty.empty and tuple(empty.columns) == FINAL_AND_BEST_COLUMNS


def test_a_run_appended_twice_is_a_usage_error():
    frame = synthetic()
    doubled = pd.concat([frame, frame[frame["run_id"] == "c"]], ignore_index=True)
    with pytest.raises(UsageError, match="run 'c' has train loss at step 0 more than once"):
        final_and_best(doubled)
    with pytest.raises(UsageError, match="4 repeated"):
        speedup(doubled, "adam")


def test_missing_columns_are_a_usage_error():
    with pytest.raises(UsageError, match=r"lacks the column.*value"):
        final_and_best(synthetic().drop(columns="value"))


# --------------------------------------------------------------------------------------------
# time_to_target
# --------------------------------------------------------------------------------------------


def test_time_to_target_first_evaluation_at_or_below():
    table = time_to_target(synthetic(), 1.25)
    assert tuple(table.columns) == TIME_TO_TARGET_COLUMNS
    assert list(table["run_id"]) == ["a", "b", "e", "f", "c", "d"]  # task, optimizer, hparams
    expected = {"a": (20, 2.0), "b": (30, 6.0), "c": (10, 0.5), "d": (20, 2.0)}
    for run_id, (steps, seconds) in expected.items():
        row = one(table, run_id=run_id)
        assert row["reached"]
        assert (row["steps_to_target"], row["seconds_to_target"]) == (steps, seconds)
        assert row["target"] == 1.25
    for run_id in ("e", "f"):  # diverged: NaN / inf never reach the target
        row = one(table, run_id=run_id)
        assert not row["reached"]
        assert math.isnan(row["steps_to_target"]) and math.isnan(row["seconds_to_target"])
    assert one(table, run_id="f")[["final_step", "final_wall_time_s"]].tolist() == [10, 0.5]


def test_time_to_target_for_accuracy_is_at_or_above():
    table = time_to_target(synthetic(), 0.7, metric="accuracy")
    assert list(table["run_id"]) == ["a"]  # the only run with train accuracy
    row = table.iloc[0]
    assert row["reached"] and (row["steps_to_target"], row["seconds_to_target"]) == (20, 2.0)


def test_time_to_target_per_task_targets():
    frame = pd.concat(
        [
            tidy_run("x", "adam", 0, train_loss([4.0, 2.0], [0, 1]), task="t1"),
            tidy_run("y", "adam", 0, train_loss([4.0, 2.0], [0, 1]), task="t2"),
        ]
    )
    table = time_to_target(frame, {"t1": 2.0, "t2": 1.0})
    assert one(table, run_id="x")["reached"] and not one(table, run_id="y")["reached"]
    assert list(table["target"]) == [2.0, 1.0]
    with pytest.raises(UsageError, match=r"no target for task.*t2"):
        time_to_target(frame, {"t1": 2.0})


def test_a_target_met_at_the_start_takes_zero_steps():
    row = time_to_target(synthetic(), 4.0).iloc[0]
    assert (row["steps_to_target"], row["seconds_to_target"]) == (0, 0.0)


# --------------------------------------------------------------------------------------------
# seed_summary
# --------------------------------------------------------------------------------------------


def test_seed_summary_mean_std_and_counts():
    summary = seed_summary(final_and_best(synthetic()), ["final_value", "best_value"])
    adam = one(summary, optimizer="adam", split="train", metric="loss")
    assert adam["n_seeds"] == 2 and adam["n_diverged"] == 0
    assert adam["final_value_mean"] == 1.25
    assert adam["final_value_std"] == pytest.approx(math.sqrt(0.125))  # (1.5, 1.0), ddof=1
    assert adam["best_value_mean"] == 1.0 and adam["best_value_std"] == 0.0
    single = one(summary, optimizer="adam", split="valid")
    assert single["n_seeds"] == 1 and single["final_value_mean"] == 2.0
    assert math.isnan(single["final_value_std"])
    # the diverged seeds are not dropped: their NaN makes the mean NaN
    rmsprop = one(summary, optimizer="rmsprop")
    assert rmsprop["n_diverged"] == 2 and math.isnan(rmsprop["final_value_mean"])
    assert rmsprop["best_value_mean"] == 4.0


def test_seed_summary_orders_splits_and_checks_columns():
    summary = seed_summary(final_and_best(synthetic()), ["final_value"])
    adam = summary[summary["optimizer"] == "adam"]
    assert list(zip(adam["split"], adam["metric"], strict=True)) == [
        ("train", "accuracy"),
        ("train", "loss"),
        ("valid", "loss"),
    ]
    with pytest.raises(UsageError, match="nonsense"):
        seed_summary(final_and_best(synthetic()), ["nonsense"])


# --------------------------------------------------------------------------------------------
# speedup
# --------------------------------------------------------------------------------------------


def test_speedup_against_the_reference_mean_final_value():
    table = speedup(synthetic(), "adam")
    assert tuple(table.columns) == SPEEDUP_COLUMNS
    assert list(table["optimizer"]) == ["adam", "rmsprop", "sgd"]
    assert set(table["target"]) == {1.25}  # mean of adam's final train losses 1.5 and 1.0
    adam = one(table, optimizer="adam")
    assert adam["is_reference"] and adam["reference_hparams"] == ADAM
    assert (adam["n_seeds"], adam["n_reached"], adam["fraction_reached"]) == (2, 2, 1.0)
    assert (adam["mean_steps_to_target"], adam["mean_seconds_to_target"]) == (25.0, 4.0)
    assert (adam["speedup_steps"], adam["speedup_seconds"]) == (1.0, 1.0)
    sgd = one(table, optimizer="sgd")
    assert not sgd["is_reference"]
    assert (sgd["mean_steps_to_target"], sgd["mean_seconds_to_target"]) == (15.0, 1.25)
    assert sgd["speedup_steps"] == pytest.approx(25 / 15)
    assert sgd["speedup_seconds"] == pytest.approx(3.2)
    rmsprop = one(table, optimizer="rmsprop")
    assert (rmsprop["n_reached"], rmsprop["fraction_reached"]) == (0, 0.0)
    assert math.isnan(rmsprop["speedup_seconds"]) and math.isnan(rmsprop["speedup_steps"])


def test_speedup_reference_fraction_below_one_is_by_definition():
    # a reference whose seeds end at 1.0 and 2.0 has target 1.5: only one of its seeds reaches it
    frame = pd.concat(
        [
            tidy_run("p", "adam", 0, train_loss([4.0, 1.0], [0, 1]), hparams=ADAM),
            tidy_run("q", "adam", 1, train_loss([4.0, 2.0], [0, 3]), hparams=ADAM),
        ]
    )
    row = speedup(frame, "adam").iloc[0]
    assert (row["target"], row["n_reached"], row["fraction_reached"]) == (1.5, 1, 0.5)
    assert (row["mean_seconds_to_target"], row["speedup_seconds"]) == (1.0, 1.0)


def test_speedup_picks_the_best_reference_setting():
    frame = pd.concat(
        [
            synthetic(),
            tidy_run("w", "adam", 0, train_loss([4.0, 3.0], [0, 1]), hparams='{"lr":1e-05}'),
        ]
    )
    table = speedup(frame, "adam")
    assert set(table["reference_hparams"]) == {ADAM}
    assert one(table, optimizer="adam", hparams=ADAM)["is_reference"]
    worse = one(table, optimizer="adam", hparams='{"lr":1e-05}')
    assert not worse["is_reference"] and worse["n_reached"] == 0


def test_speedup_without_the_reference_is_a_usage_error():
    frame = pd.concat(
        [synthetic(), tidy_run("o", "sgd", 0, train_loss([1.0], [0]), task="other", hparams=SGD)]
    )
    with pytest.raises(UsageError) as error:
        speedup(frame, "adam")
    message = str(error.value)
    assert "'other'" in message and "'adam'" in message and "optimizers present: sgd" in message
    assert "\n" not in message
    with pytest.raises(UsageError, match="optimizers present: adam, rmsprop, sgd"):
        speedup(synthetic(), "lion")


def test_config_labels_name_the_differing_hyperparameters():
    frame = pd.concat(
        [
            synthetic(),
            tidy_run("w", "adam", 0, train_loss([4.0], [0]), hparams='{"lr":1e-05}'),
        ]
    )
    labels = config_labels(frame)
    assert labels[("adam", ADAM)] == "adam lr=0.001"
    assert labels[("adam", '{"lr":1e-05}')] == "adam lr=1e-05"
    assert labels[("sgd", SGD)] == "sgd"


# --------------------------------------------------------------------------------------------
# a real run
# --------------------------------------------------------------------------------------------


def test_derived_tables_of_a_real_run():
    from harness.runner import run

    results = [
        run("quadratic", name, hparams, steps=40, seed=seed, eval_every=10)
        for name, hparams in (("adam", {"lr": 0.1}), ("sgd", {"lr": 0.5}))
        for seed in (0, 1)
    ]
    frame = pd.concat([r.frame() for r in results], ignore_index=True)
    table = final_and_best(frame)
    assert set(table["split"]) == {"train", "valid", "test"}
    for result in results:
        row = one(table, run_id=result.run_id, split="test", metric="loss")
        assert row["final_value"] == result.final("test")
        assert row["final_step"] == result.steps_done == 40
        assert row["final_wall_time_s"] == result.train_seconds
        assert row["best_value"] <= row["final_value"]
    reached = time_to_target(frame, math.inf)
    assert reached["reached"].all() and (reached["steps_to_target"] == 0).all()
    table = speedup(frame, "adam")
    assert len(table) == 2 and one(table, optimizer="adam")["speedup_steps"] == 1.0
    assert (table["n_seeds"] == 2).all()
