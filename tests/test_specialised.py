"""The ``specialised`` learner (optimizers/specialised.py): a trained checkpoint with only named
blocks of its theta meta-trained. At its initial theta it is the base checkpoint bit for bit;
meta-training moves nothing but the trainable blocks; its checkpoint loads without the base
file; bad settings fail in one line."""

from __future__ import annotations

import pytest
import torch

from harness.errors import UsageError
from harness.registry import create_learner
from optimizers.checkpoint import load_lopt_checkpoint

BASE = "nominal_mlp_mlp_mix_valid"


def specialised(**settings):
    return create_learner("specialised", base=BASE, compile=False, **settings)


def test_at_its_initial_theta_it_is_the_base_checkpoint():
    from harness.runner import run
    from optimizers.learned import opt_fn

    spec = specialised()
    base = load_lopt_checkpoint(BASE)
    assert spec.num_theta == 6 and spec.trainable == ["schedule"]
    assert torch.equal(spec.full_theta(spec.init_theta(0)), base.theta)

    def losses(optimizer) -> list[float]:
        result = run("digits_mlp", optimizer, steps=30, seed=3, warmup_steps=0)
        return [m[4] for m in result.measurements if m[2] == "train_batch" and m[3] == "loss"]

    ours = losses(opt_fn(spec, spec.init_theta(0)))
    eager = create_learner(base.learner.family, compile=False, **base.learner.record())
    assert ours and ours == losses(opt_fn(eager, base.theta))


def test_only_the_trainable_blocks_move_and_the_update_is_differentiable():
    spec = specialised(trainable=["W3", "schedule"])
    assert spec.trainable == ["schedule", "W3"]  # the base's order
    blocks = spec.base_learner.theta_blocks()
    theta = spec.init_theta(0) + 0.1
    full = spec.full_theta(theta)
    moved = (full != spec.base_theta).nonzero().flatten().tolist()
    expected = [*range(*blocks["schedule"]), *range(*blocks["W3"])]
    assert moved == expected
    assert torch.equal(full[expected], theta)

    params = (torch.randn(5, 3), torch.randn(3))
    grads = tuple(torch.randn_like(p) for p in params)
    leaf = theta.clone().requires_grad_(True)
    state = spec.init(params)
    for _ in range(3):
        params, state = spec.apply(leaf, grads, state, params)
    (grad,) = torch.autograd.grad(sum(p.sum() for p in params), leaf)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_the_batched_step_is_the_bases_at_the_full_theta():
    spec = specialised()
    base = spec.base_learner
    w = torch.randn(3, 20)
    g = torch.randn(3, 20)
    theta = spec.init_theta(0) + 0.05 * torch.randn(3, spec.num_theta)
    step = torch.tensor([0, 5, 9])
    horizon = torch.tensor([100, 100, 100])
    ours = spec.batched_step(theta, w, g, spec.batched_init(w), step, horizon, (12, 8))
    theirs = base.batched_step(
        spec.full_theta(theta), w, g, base.batched_init(w), step, horizon, (12, 8)
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    assert spec.learning_rate(spec.init_theta(0), 500) == base.learning_rate(spec.base_theta, 500)


def test_a_meta_trained_checkpoint_loads_without_the_base_file(tmp_path):
    from harness.meta.command import meta_train

    out = tmp_path / "spec"
    meta_train(
        {
            "task": "digits_mlp",
            "learner": "specialised",
            "learner_cfg": {"base": BASE, "trainable": ["schedule"], "compile": False},
            "estimator": "es",
            "problems": 2,
            "horizon": 40,
            "unroll_length": 40,
            "sigma": 0.1,
            "lr": 0.03,
            "parallel": "loop",
            "outer_steps": 2,
            "progress": False,
            "out": str(out),
        }
    )
    loaded = load_lopt_checkpoint(out / "lopt.safetensors")
    spec = loaded.learner
    assert spec.family == "specialised" and loaded.theta.numel() == 6
    full = spec.full_theta(loaded.theta)
    base = load_lopt_checkpoint(BASE).theta
    start, stop = spec.base_learner.theta_blocks()["schedule"]
    assert not torch.equal(full[start:stop], base[start:stop])  # ES moved the schedule
    assert torch.equal(full[stop:], base[stop:])
    record = spec.record()
    rebuilt = create_learner("specialised", **{**record, "base": str(tmp_path / "gone.pt")})
    assert torch.equal(rebuilt.full_theta(loaded.theta), full)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"trainable": ["schedule", "W9"]}, "trainable must be distinct blocks of nominal_mlp"),
        ({"trainable": []}, "trainable must be distinct blocks"),
        ({"base": "lopt_mnist5k_train"}, "does not name its theta's blocks"),
        ({"base": None}, "base must name a shipped learned optimizer"),
    ],
)
def test_bad_settings_fail_in_one_line(settings, message):
    with pytest.raises(UsageError, match=message) as info:
        create_learner("specialised", **{"base": BASE, **settings})
    assert "\n" not in str(info.value)
