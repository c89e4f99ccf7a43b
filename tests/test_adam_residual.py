"""adam_residual: at its initial theta it is Adam; its terms are differentiable and vmap-safe;
it meta-trains, is served from its checkpoint, and works as a torch.optim optimizer."""

from __future__ import annotations

import math
from itertools import islice

import pytest
import torch

from harness.errors import UsageError
from harness.registry import create_learner, create_task
from harness.runner import make_train_step
from optimizers.learned import LearnedOptimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_term_is_differentiable_and_vmap_equals_a_loop() -> None:
    learner = create_learner("adam_residual", hidden=3, horizon=10)
    theta = torch.randn(learner.num_theta, dtype=torch.float64) * 0.3
    params = (torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    grads = tuple(torch.randn_like(p) for p in params)
    state = learner.init(params)
    state["moments"] = state["moments"] + 0.1
    state["step"] = 4

    def first(t: torch.Tensor) -> torch.Tensor:
        return learner.apply(t, grads, state, params)[0][0].sum()

    assert torch.autograd.gradcheck(first, (theta.clone().requires_grad_(True),))
    thetas = torch.randn(3, learner.num_theta, dtype=torch.float64) * 0.3
    batched = torch.func.vmap(lambda t: learner.apply(t, grads, state, params)[0][0])(thetas)
    for i in range(3):
        torch.testing.assert_close(batched[i], learner.apply(thetas[i], grads, state, params)[0][0])


def test_the_update_is_odd_so_no_drift_can_be_learned() -> None:
    """Flipping the signs of the weights, the gradients and the first moments flips the new
    weights, for any theta: no theta adds the same drift to every weight."""
    learner = create_learner("adam_residual", horizon=50)
    theta = torch.randn(learner.num_theta, generator=torch.Generator().manual_seed(2))
    params = (torch.randn(6, 2), torch.randn(4))
    grads = tuple(torch.randn_like(p) for p in params)
    state = learner.init(params)
    state["moments"] = torch.stack([torch.randn(16), torch.rand(16)])
    state["step"] = 9
    flipped = {**state, "moments": torch.stack([-state["moments"][0], state["moments"][1]])}
    new, _ = learner.apply(theta, grads, state, params)
    mirror, _ = learner.apply(theta, tuple(-g for g in grads), flipped, tuple(-p for p in params))
    for a, b in zip(new, mirror, strict=True):
        torch.testing.assert_close(a, -b)


def test_hidden_zero_is_adam_with_a_learned_schedule() -> None:
    """``hidden=0``: theta is the schedule alone; the update is Adam's times exp(a . phi_t)."""
    learner = create_learner("adam_residual", hidden=0, horizon=10, lr0=0.01)
    assert learner.num_theta == len(learner.settings.centres) + 1
    theta = torch.randn(learner.num_theta, dtype=torch.float64) * 0.3
    params = (torch.randn(4, 3, dtype=torch.float64),)
    grads = (torch.randn(4, 3, dtype=torch.float64),)
    new, state = learner.apply(theta, grads, learner.init(params), params)
    phi = learner.time_features(0, grads[0])
    adam_first_step = grads[0] / (grads[0].abs() + 1e-8)  # bias-corrected m / sqrt(v) at t = 1
    expected = params[0] - 0.01 * torch.exp(theta @ phi) * adam_first_step
    torch.testing.assert_close(new[0], expected)
    assert state["step"] == 1


def test_with_a_base_weight_decay_it_is_adamw_and_learns_the_decay_schedule() -> None:
    """``wd0 > 0``: at its initial theta, 100 steps equal torch.optim.AdamW(lr0, wd0) to 1e-6;
    theta gains the decay schedule ``c``, which scales the decay by exp(c . phi_t)."""
    task = create_task("digits_mlp")
    learner = create_learner("adam_residual", lr0=3e-3, wd0=0.5, horizon=100)
    plain = create_learner("adam_residual", lr0=3e-3, horizon=100)
    assert learner.num_theta == plain.num_theta + learner.settings.num_time
    theta = learner.init_theta(5)
    ours = LearnedOptimizer.from_theta(theta, learner)
    params = task.init_params(0)
    state = ours.init(params)
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    adamw = torch.optim.AdamW(reference, lr=3e-3, weight_decay=0.5)
    step = make_train_step(task, ours)
    for batch in islice(task.batches("train", 0), 100):
        adamw.zero_grad()
        task.loss(tuple(reference), batch).backward()
        adamw.step()
        params, state = step(params, state, batch)[:2]
    for a, b in zip(params, reference, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
    assert learner.weight_decay(theta, 1) == pytest.approx(0.5)
    shifted = theta.clone()
    shifted[-1] = 1.0  # the constant feature of c: the decay times e at every step
    assert learner.weight_decay(shifted, 50) == pytest.approx(0.5 * math.e)
    assert plain.weight_decay(plain.init_theta(0), 1) == 0.0


def test_a_start_schedule_fits_a_tuned_cosine_decay() -> None:
    """``start_final_fraction``: the initial ``a`` follows adam_cosine's decay to its floor
    (within 13% at every step), and the rest of theta starts as by default."""
    from optimizers.adam import cosine_factor

    learner = create_learner("adam_residual", hidden=0, lr0=0.01, start_final_fraction=0.08)
    theta = learner.init_theta(0)
    for step in range(1, 2001, 37):
        expected = 0.01 * cosine_factor(step - 1, 2000, 0, 0.08)
        assert learner.learning_rate(theta, step) == pytest.approx(expected, rel=0.13)
    plain = create_learner("adam_residual", hidden=0, lr0=0.01)
    assert torch.count_nonzero(plain.init_theta(0)) == 0
    with pytest.raises(UsageError, match="start_final_fraction"):
        create_learner("adam_residual", start_final_fraction=0.0)
