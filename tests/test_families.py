"""Task families (issue 24): deterministic sampling that covers the space, grouping by
architecture, the rescaling, and every member as an ordinary task."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from harness import run
from harness.errors import UnknownNameError, UsageError
from harness.registry import create_task, list_families, list_tasks
from tasks.families import (
    HELD_OUT_SEEDS,
    FamilyTask,
    build_task,
    group_tasks,
    sample_group,
    sample_tasks,
)
from tasks.families.mlp_mix import BATCH_SIZES, SCALE_RANGE, WIDTHS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_families_are_registered_as_families_and_tasks() -> None:
    assert {"mlp_mix", "mlp_mix_fmnist", "conv_mix"} <= set(list_families())
    assert {"mlp_mix", "mlp_mix_fmnist", "conv_mix"} <= set(list_tasks())
    with pytest.raises(UnknownNameError, match="mlp_mix"):
        sample_tasks("mlp_mixx", [0])


def test_sampling_is_deterministic_per_seed() -> None:
    first = sample_tasks("mlp_mix", range(50))
    assert first == sample_tasks("mlp_mix", range(50))
    assert first[7] == sample_tasks("mlp_mix", [7])[0]  # a seed's task does not depend on others
    assert len(set(first)) == 50
    assert sample_group("conv_mix", 3, [1, 2]) == sample_group("conv_mix", 3, [1, 2])


def test_mlp_mix_covers_its_space() -> None:
    tasks = sample_tasks("mlp_mix", range(600))
    assert {len(t.hidden) for t in tasks} == {1, 2, 3}
    assert {w for t in tasks for w in t.hidden} == set(WIDTHS)
    assert {t.activation for t in tasks} == {"relu", "tanh", "gelu"}
    assert {t.batch_size for t in tasks} == set(BATCH_SIZES)
    assert {(t.dataset, t.image_size) for t in tasks} == {
        ("digits", 8),
        ("mnist5k_8", 8),
        ("mnist5k_16", 16),
    }
    assert all(t.kind == "mlp" for t in tasks)
    rescaled = [t for t in tasks if any(s != 1.0 for s in t.param_scale)]
    assert 0.35 < len(rescaled) / len(tasks) < 0.65
    scales = [s for t in rescaled for s in t.param_scale]
    assert SCALE_RANGE[0] <= min(scales) < 0.2 and 5.0 < max(scales) <= SCALE_RANGE[1]
    # log-uniform: about half the scales below 1
    assert 0.4 < sum(s < 1 for s in scales) / len(scales) < 0.6
    image_sizes = Counter(t.image_size for t in tasks)
    assert 0.65 < image_sizes[8] / len(tasks) < 0.85


def test_conv_mix_and_fmnist_families_cover_their_space() -> None:
    convs = sample_tasks("conv_mix", range(200))
    assert {len(t.hidden) for t in convs} == {2, 3}
    assert {t.hidden[0] for t in convs} == {4, 8, 16}
    assert {t.kind for t in convs} == {"conv"} and {t.dataset for t in convs} == {"mnist5k_16"}
    fashion = sample_tasks("mlp_mix_fmnist", range(300))
    assert {t.dataset for t in fashion} == {
        "digits",
        "mnist5k_8",
        "fmnist_8",
        "mnist5k_16",
        "fmnist_16",
    }


def test_sample_group_shares_one_architecture_and_varies_the_rest() -> None:
    group = sample_group("mlp_mix", 11, range(40))
    assert len({t.group_key for t in group}) == 1
    assert group[0].group_key == sample_tasks("mlp_mix", [11])[0].group_key
    assert len({t.param_scale for t in group}) > 10
    if group[0].image_size == 8:
        assert {t.dataset for t in group} == {"digits", "mnist5k_8"}
    assert group[3].name == "mlp_mix:11:3"
    assert sample_tasks("mlp_mix", [5])[0].name == "mlp_mix:5"


def test_group_tasks_groups_by_architecture() -> None:
    tasks = (
        sample_group("mlp_mix", 1, [0, 1])
        + sample_group("mlp_mix", 2, [0])
        + sample_group("mlp_mix", 1, [2])
    )
    assert tasks[0].group_key != tasks[2].group_key
    assert list(group_tasks(tasks).values()) == [[0, 1, 3], [2]]


def test_family_task_checks_itself() -> None:
    task = sample_tasks("mlp_mix", [0])[0]
    fields = {**task.__dict__}
    with pytest.raises(ValueError):
        FamilyTask(**{**fields, "activation": "sigmoid"})
    with pytest.raises(ValueError):
        FamilyTask(**{**fields, "param_scale": (1.0,)})
    with pytest.raises(ValueError):
        FamilyTask(**{**fields, "dataset": "digits", "image_size": 16})


def test_a_member_is_an_ordinary_task() -> None:
    task = create_task("mlp_mix", member=3)
    assert task.spec == sample_tasks("mlp_mix", [3])[0]
    assert create_task("mlp_mix", member=3, arch=8).spec == sample_group("mlp_mix", 8, [3])[0]
    params = task.init_params(0)
    assert [tuple(p.shape) for p in params] == list(task.spec.shapes)
    batch = next(task.batches("train", 0))
    assert batch[0].shape[0] == task.spec.batch_size
    assert math.isfinite(float(task.loss(params, batch)))
    metrics = task.evaluate(params, "test")
    assert set(metrics) == {"loss", "accuracy"}
    result = run("mlp_mix", "adam", steps=20, seed=1, task_cfg={"member": 3}, warmup_steps=0)
    assert result.status == "completed" and result.task_cfg["member"] == 3
    losses = result.frame().query("split == 'train' and metric == 'loss'")["value"].to_list()
    assert losses[-1] < losses[0]  # Adam at its default trains a member


def test_held_out_members_are_ordinary_tasks_too() -> None:
    conv = create_task("conv_mix", member=HELD_OUT_SEEDS)
    params = conv.init_params(0)
    assert math.isfinite(float(conv.loss(params, next(conv.batches("train", 0)))))


@pytest.mark.parametrize("bad", [{"member": -1}, {"member": 1.5}, {"arch": -2}, {"member": True}])
def test_bad_member_settings_are_one_line_usage_errors(bad: dict) -> None:
    with pytest.raises(UsageError, match=r"mlp_mix: (member|arch) must be an integer >= -?\d"):
        create_task("mlp_mix", **bad)


def test_rescaling_keeps_the_function_and_scales_the_gradient() -> None:
    """A rescaled member computes the unscaled model's function at initialisation, and the
    gradient in each tensor is the scale times the gradient in the model's weight."""
    spec = next(t for t in sample_tasks("mlp_mix", range(20)) if len(set(t.param_scale)) > 1)
    plain = build_task(FamilyTask(**{**spec.__dict__, "param_scale": (1.0,) * len(spec.shapes)}))
    scaled = build_task(spec)
    batch = next(scaled.batches("train", 4))
    p_scaled = tuple(p.requires_grad_(True) for p in scaled.init_params(4))
    p_plain = tuple(p.requires_grad_(True) for p in plain.init_params(4))
    loss_scaled = scaled.loss(p_scaled, batch)
    loss_plain = plain.loss(p_plain, batch)
    torch.testing.assert_close(loss_scaled, loss_plain, rtol=1e-5, atol=1e-6)
    g_scaled = torch.autograd.grad(loss_scaled, p_scaled)
    g_plain = torch.autograd.grad(loss_plain, p_plain)
    for gs, gp, s in zip(g_scaled, g_plain, spec.param_scale, strict=True):
        torch.testing.assert_close(gs, gp * s, rtol=1e-4, atol=1e-6)


def test_a_fashion_mnist_member_runs_where_the_data_is_installed() -> None:
    from harness.errors import DatasetUnavailableError
    from tasks.data.fashion_mnist import load_fashion_mnist

    try:
        load_fashion_mnist(download=False)
    except DatasetUnavailableError:
        pytest.skip("Fashion-MNIST is not installed here")
    member = next(
        s for s in range(100) if sample_tasks("mlp_mix_fmnist", [s])[0].dataset == "fmnist_8"
    )
    task = create_task("mlp_mix_fmnist", member=member)
    assert task.split_size("train") == 5000 and task.split_size("test") == 2000
    params = task.init_params(0)
    assert math.isfinite(float(task.loss(params, next(task.batches("train", 0)))))
