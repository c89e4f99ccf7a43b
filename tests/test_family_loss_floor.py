"""``loss_floor`` of ``lopt meta-train family=...``: a truncation's outer loss is the mean of
``log(clamp(loss, loss_floor, 10))``, so a loss below the floor earns nothing more; the ES
samples, the rp gradient and the held-out judge all use the run's floor, and runs made before
the setting keep their ids."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from family_runs import TINY_FAMILY_RUN

from harness.errors import UsageError
from harness.meta.family.problems import Rows, advance_with_gradient, initial_rows, outer_loss
from harness.registry import create_learner
from harness.settings.family import coerce_family_config
from tasks.families import sample_group

TINY_RUN = {**TINY_FAMILY_RUN, "estimator": "tes"}


def test_the_outer_loss_counts_a_loss_below_the_floor_as_the_floor():
    losses = torch.tensor([[1e-9, 0.5, 20.0, float("nan")], [1e-3, 0.5, 1.0, 2.0]])
    default = outer_loss(losses)
    floored = outer_loss(losses, floor=1e-2)
    expected_default = [
        (math.log(1e-8) + math.log(1e-3)) / 2,
        math.log(0.5),
        (math.log(10.0) + 0.0) / 2,
        (math.log(10.0) + math.log(2.0)) / 2,
    ]
    expected_floored = [math.log(1e-2), math.log(0.5), expected_default[2], expected_default[3]]
    torch.testing.assert_close(default, torch.tensor(expected_default, dtype=torch.float64))
    torch.testing.assert_close(floored, torch.tensor(expected_floored, dtype=torch.float64))


def test_the_rp_gradient_is_zero_where_every_loss_is_below_the_floor():
    learner = create_learner("nominal_mlp", compile=False, horizon=100)
    tasks = sample_group("mlp_mix", 26, [0, 1])
    ws, states = initial_rows(learner, tasks, [100, 101])
    rows = Rows(list(tasks), [100, 101], ws, states, [0, 0], [100, 100])
    theta = learner.init_theta(0).expand(2, -1).clone()
    _, losses, grads = advance_with_gradient(learner, rows, theta, 5)
    assert float(grads.abs().sum()) > 0
    assert float(losses.max()) < 9.0
    _, _, floored = advance_with_gradient(learner, rows, theta, 5, floor=9.0)
    assert float(floored.abs().sum()) == 0.0


def test_loss_floor_is_checked_and_in_the_identity_only_when_set():
    plain = coerce_family_config(TINY_RUN)
    assert plain.loss_floor == 1e-8 and "loss_floor" not in plain.identity()
    floored = coerce_family_config({**TINY_RUN, "loss_floor": 1e-4})
    assert floored.identity()["loss_floor"] == 1e-4
    for bad in (0.0, -1.0, 10.0):
        with pytest.raises(UsageError, match=r"^loss_floor must be > 0 and < 10"):
            coerce_family_config({**TINY_RUN, "loss_floor": bad})


def test_a_floored_run_never_logs_an_outer_or_held_out_loss_below_the_floor(tmp_path):
    from harness.meta.family.command import meta_train_family
    from harness.meta.family.trainer import LOG_FILE

    floor = 2.0  # digits and MNIST start near log(10) = 2.3 nats and fall below 2 within steps
    meta_train_family({**TINY_RUN, "out": str(tmp_path / "plain")})
    meta_train_family({**TINY_RUN, "loss_floor": floor, "out": str(tmp_path / "floor")})
    plain = pd.read_csv(tmp_path / "plain" / LOG_FILE)
    floored = pd.read_csv(tmp_path / "floor" / LOG_FILE)

    def values(frame: pd.DataFrame, metric: str) -> pd.Series:
        return frame.loc[frame["metric"] == metric, "value"]

    for metric in ("outer_loss", "heldout_loss"):
        assert (values(floored, metric) >= math.log(floor) - 1e-9).all()
    # the first outer step runs the same pairs from the same theta: clamping raised its loss
    assert values(floored, "outer_loss").iloc[0] > values(plain, "outer_loss").iloc[0]
    assert plain["run_id"].iloc[0] != floored["run_id"].iloc[0]
