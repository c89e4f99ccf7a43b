"""The batched inner-loop engine (issue 24): a ProblemBatch equals a loop over the ordinary
tasks it batches (autograd, float64), unroll with BatchedAdam equals torch.optim.Adam problem
by problem, and problems are grouped by architecture."""

from __future__ import annotations

import pytest
import torch

from harness.meta.batched import (
    BatchedAdam,
    BatchedLearner,
    ProblemBatch,
    problem_batches,
    unroll,
)
from tasks.families import build_task, sample_group, sample_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-6


def rescaled_group(family: str, arch_seed: int, size: int) -> list:
    """``size`` members (seeds 2, 3, ...) of one architecture, at least one of them rescaled."""
    group = sample_group(family, arch_seed, range(2, 2 + size))
    assert any(len(set(t.param_scale)) > 1 for t in group)
    return group


def reference_loss_and_grad(spec, seed: int, step: int) -> tuple[float, torch.Tensor]:
    """The ordinary task's minibatch loss at ``step`` from ``seed`` and its autograd gradient,
    in float64."""
    task = build_task(spec)
    task._model.double()
    params = tuple(p.double().requires_grad_(True) for p in task.init_params(seed))
    batches = task.batches("train", seed)
    for _ in range(step + 1):
        inputs, labels = next(batches)
    loss = task.loss(params, (inputs.double(), labels))
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([g.flatten() for g in grads])


# arch seeds: mlp_mix 3 is tanh (32, 128) at 8x8 with digits and mnist5k_8 members, 4 GELU at
# 16x16, 7 ReLU with three hidden layers; conv_mix 0 is GELU with 16 channels
CASES = [
    ("mlp_mix", 3, "hand"),
    ("mlp_mix", 4, "hand"),
    ("mlp_mix", 7, "hand"),
    ("mlp_mix", 3, "vmap"),
    ("conv_mix", 0, "vmap"),
]


@pytest.mark.parametrize(("family", "arch", "backend"), CASES)
def test_loss_and_grad_equal_a_loop_over_single_models(family, arch, backend) -> None:
    tasks = rescaled_group(family, arch, 4)
    seeds = [5, 6, 7, 8]
    batch = ProblemBatch(tasks, seeds, dtype=torch.float64, backend=backend)
    w = batch.init_params()
    steps = torch.tensor([0, 1, 40, 150])  # 150 crosses epoch boundaries for every dataset
    loss, grad = batch.loss_and_grad(w, steps)
    assert loss.shape == (4,) and grad.shape == (4, batch.num_params)
    for i, spec in enumerate(tasks):
        expected_init = torch.cat([p.flatten() for p in build_task(spec).init_params(seeds[i])])
        torch.testing.assert_close(w[i], expected_init.double(), rtol=0, atol=0)
        ref_loss, ref_grad = reference_loss_and_grad(spec, seeds[i], int(steps[i]))
        assert abs(float(loss[i]) - ref_loss) < TOL
        assert float((grad[i] - ref_grad).abs().max()) < TOL


def test_the_datasets_of_one_group_may_differ() -> None:
    tasks = rescaled_group("mlp_mix", 3, 4)  # the members of CASES[0]: 2 datasets, 3 rescaled
    assert {t.dataset for t in tasks} == {"digits", "mnist5k_8"}
    assert sorted(ProblemBatch(tasks, range(4)).describe()["datasets"]) == ["digits", "mnist5k_8"]


@pytest.mark.parametrize(
    ("family", "arch", "backend"), [("mlp_mix", 3, "hand"), ("mlp_mix", 3, "vmap"), CASES[4]]
)
def test_eval_loss_equals_the_tasks_evaluate(family: str, arch: int, backend: str) -> None:
    tasks = rescaled_group(family, arch, 3)
    batch = ProblemBatch(tasks, [1, 2, 3], backend=backend)
    w = batch.init_params() * 1.5  # not the init: any parameters
    for split in ("train", "valid", "test"):
        losses = batch.eval_loss(w, split)
        assert losses.shape == (3,) and losses.dtype == torch.float64
        for i, spec in enumerate(tasks):
            expected = build_task(spec).evaluate(batch.unflatten(w[i]), split)["loss"]
            assert abs(float(losses[i]) - expected) < 1e-5
    with pytest.raises(ValueError, match="unknown split"):
        batch.eval_loss(w, "bogus")


def adam_loop(spec, seed: int, start: int, steps: int, lr: float) -> tuple[torch.Tensor, list]:
    """One ordinary task trained by torch.optim.Adam from ``seed`` for ``steps`` steps from its
    inner step ``start`` (fresh parameters and moments there, as a staggered start: the batches
    before it skipped, Adam's step count set to ``start``), in float64."""
    task = build_task(spec)
    task._model.double()
    params = [p.double().requires_grad_(True) for p in task.init_params(seed)]
    opt = torch.optim.Adam(params, lr=lr)
    for p in params:
        opt.state[p] = {
            "step": torch.tensor(float(start)),
            "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": torch.zeros_like(p),
        }
    batches = task.batches("train", seed)
    for _ in range(start):
        next(batches)
    losses = []
    for _ in range(steps):
        inputs, labels = next(batches)
        opt.zero_grad()
        loss = task.loss(tuple(params), (inputs.double(), labels))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return torch.cat([p.detach().flatten() for p in params]), losses


@pytest.mark.parametrize(("family", "arch", "backend"), [CASES[0], CASES[2], CASES[4]])
def test_unroll_equals_torch_adam_problem_by_problem(family, arch, backend) -> None:
    tasks = rescaled_group(family, arch, 3)
    seeds = [11, 12, 13]
    batch = ProblemBatch(tasks, seeds, dtype=torch.float64, backend=backend)
    learner = BatchedAdam(lr=3e-3)
    assert isinstance(learner, BatchedLearner)
    # problem 1 runs at twice the learning rate (its theta row is log 2); problem 2 is a
    # staggered start at inner step 20; two unrolls in a row continue where the first stopped
    theta = torch.tensor([[0.0], [float(torch.log(torch.tensor(2.0)))], [0.0]], dtype=torch.float64)
    w0 = batch.init_params()
    state = learner.batched_init(w0)
    start = torch.tensor([0, 0, 20])
    horizon = torch.full((3,), 100)
    w, state, step, losses_a = unroll(batch, learner, theta, w0, state, start, horizon, 12)
    w, state, step, losses_b = unroll(batch, learner, theta, w, state, step, horizon, 13)
    assert step.tolist() == [25, 25, 45] and losses_a.shape == (12, 3)
    losses = torch.cat([losses_a, losses_b])
    for i, spec in enumerate(tasks):
        lr = 3e-3 * (2.0 if i == 1 else 1.0)
        ref_w, ref_losses = adam_loop(spec, seeds[i], int(start[i]), 25, lr)
        assert float((w[i] - ref_w).abs().max()) < TOL
        ref = torch.tensor(ref_losses, dtype=torch.float64)
        assert float((losses[:, i] - ref).abs().max()) < TOL
    assert torch.equal(w0, batch.init_params())  # pure: unroll left its inputs alone
    with pytest.raises(ValueError, match="do not fit"):
        unroll(batch, learner, theta[:2], w0, state, start, horizon, 1)


def test_each_problem_reads_its_own_step_of_its_data_order() -> None:
    tasks = sample_group("mlp_mix", 7, range(2))
    batch = ProblemBatch(tasks, [3, 4], dtype=torch.float64)
    step = torch.tensor([0, 37])
    together = batch.batch_indices(step, 5)
    assert together.shape == (5, 2, tasks[0].batch_size)
    for i in range(2):
        alone = ProblemBatch([tasks[i]], [[3, 4][i]], dtype=torch.float64)
        assert torch.equal(alone.batch_indices(step[i : i + 1], 5)[:, 0], together[:, i])
    # going back to an earlier step gives the same indices again
    assert torch.equal(batch.batch_indices(step, 5), together)
    assert torch.equal(batch.batch_indices(torch.tensor([2, 39]), 3), together[2:5])


def test_reseed_is_a_fresh_problem() -> None:
    tasks = sample_group("mlp_mix", 3, range(3))
    batch = ProblemBatch(tasks, [1, 2, 3], dtype=torch.float64)
    batch.batch_indices(torch.tensor([50, 50, 50]), 1)
    rows = batch.reseed([1], [99])
    fresh = ProblemBatch([tasks[1]], [99], dtype=torch.float64)
    assert torch.equal(rows, fresh.init_params())
    assert torch.equal(
        batch.batch_indices(torch.tensor([0, 0, 0]), 4)[:, 1]
        - batch.batch_indices(torch.tensor([0, 0, 0]), 4)[:, 1].min(),
        fresh.batch_indices(torch.tensor([0]), 4)[:, 0]
        - fresh.batch_indices(torch.tensor([0]), 4)[:, 0].min(),
    )


def test_problems_are_grouped_by_architecture() -> None:
    tasks = sample_tasks("mlp_mix", range(12)) + sample_group("mlp_mix", 3, range(100, 104))
    seeds = list(range(len(tasks)))
    groups = problem_batches(tasks, seeds)
    assert sorted(i for rows, _ in groups for i in rows) == list(range(len(tasks)))
    for rows, batch in groups:
        assert {tasks[i].group_key for i in rows} == {batch.spec.group_key}
        assert batch.seeds == [seeds[i] for i in rows]
    assert len(groups) == len({t.group_key for t in tasks})
    with pytest.raises(ValueError, match="one architecture"):
        ProblemBatch(sample_tasks("mlp_mix", [0, 1]), [0, 1])
    with pytest.raises(ValueError, match="hand backend"):
        ProblemBatch(sample_tasks("conv_mix", [0]), [0], backend="hand")
    with pytest.raises(ValueError, match="one init seed per task"):
        ProblemBatch(sample_tasks("conv_mix", [0]), [0, 1])


def test_float32_matches_autograd_too() -> None:
    """The float32 path (tanh through sigmoid, GELU, ReLU) against autograd on the ordinary
    task in float32."""
    for arch in (3, 4, 7):  # tanh, GELU, ReLU
        tasks = rescaled_group("mlp_mix", arch, 3)
        batch = ProblemBatch(tasks, [1, 2, 3])
        w = batch.init_params()
        steps = torch.tensor([0, 5, 9])
        loss, grad = batch.loss_and_grad(w, steps)
        for i, spec in enumerate(tasks):
            task = build_task(spec)
            params = tuple(p.requires_grad_(True) for p in task.init_params(i + 1))
            batches = task.batches("train", i + 1)
            for _ in range(int(steps[i]) + 1):
                minibatch = next(batches)
            ref = task.loss(params, minibatch)
            ref_grad = torch.cat([g.flatten() for g in torch.autograd.grad(ref, params)])
            assert abs(float(loss[i]) - float(ref.detach())) < 1e-5
            torch.testing.assert_close(grad[i], ref_grad, rtol=1e-4, atol=1e-5)
