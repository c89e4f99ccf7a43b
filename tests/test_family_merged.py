"""The paper's merged estimator on the batched engine (harness.meta.batched.differentiable,
``estimator=merged`` of harness.meta.family) and the outer-valid objective: the differentiable
unroll is the engine's, its theta gradient is the finite differences', the merged estimate is
the per-problem implementation's (harness.meta.estimators) on the same problem, and its rp
and ES parts agree within standard errors (both unbiased for the smoothed truncation loss)."""

from __future__ import annotations

import math

import pytest
import torch
from family_runs import TINY_FAMILY_RUN

from harness.meta.batched import BatchedAdam, ProblemBatch, unroll
from harness.meta.batched.differentiable import unroll_with_graph
from harness.meta.estimators import SampleSums, antithetic_pair, inverse_variance_merge
from harness.meta.family.estimators import MergedEstimator, TruncatedESEstimator
from harness.meta.family.pairs import PairSchedule, antithetic_truncation, fresh_pairs
from harness.meta.family.problems import outer_loss
from harness.meta.truncation import InnerProblems, InnerState, TruncationData
from harness.meta.world import World
from harness.registry import create_learner
from tasks.families import sample_group
from tasks.families.member import build_task

# seed 26: the mlp_mix architecture of 8x8 digits, one hidden layer of 16, GELU (4810 weights)
ARCH_SEED = 26


def small_batch(dtype: torch.dtype = torch.float32, count: int = 4) -> ProblemBatch:
    tasks = sample_group("mlp_mix", ARCH_SEED, list(range(count)))
    return ProblemBatch(tasks, [100 + i for i in range(count)], dtype=dtype)


def nominal(horizon: int = 100):
    return create_learner("nominal_mlp", compile=False, horizon=horizon)


def start(batch: ProblemBatch, learner, theta_scale: float = 0.1, seed: int = 0):
    """Rows at steps 0, 3, 6, ... with perturbed thetas ``[B, D]``."""
    w = batch.init_params()
    state = learner.batched_init(w)
    generator = torch.Generator().manual_seed(seed)
    base = learner.init_theta(0).to(w.dtype)
    theta = base + theta_scale * torch.randn(
        batch.size, learner.num_theta, generator=generator, dtype=w.dtype
    )
    step = torch.arange(batch.size, dtype=torch.int64) * 3
    horizon = torch.full((batch.size,), 100, dtype=torch.int64)
    return theta, w, state, step, horizon


@pytest.mark.parametrize("objective", ["train", "valid"])
@pytest.mark.parametrize("inner_grad", ["closed", "autograd"])
def test_the_differentiable_unroll_is_the_engines_unroll(objective, inner_grad):
    batch, learner = small_batch(), nominal()
    theta, w, state, step, horizon = start(batch, learner)
    w1, state1, step1, losses1 = unroll(
        batch, learner, theta, w, state, step, horizon, 8, objective
    )
    leaf = theta.clone().requires_grad_(True)
    w2, state2, step2, losses2 = unroll_with_graph(
        batch, learner, leaf, w, state, step, horizon, 8, objective=objective, inner_grad=inner_grad
    )
    assert losses2.requires_grad and w2.requires_grad
    torch.testing.assert_close(losses2.detach(), losses1, atol=1e-6, rtol=0)
    torch.testing.assert_close(w2.detach(), w1, atol=1e-6, rtol=0)
    torch.testing.assert_close(state2["moments"].detach(), state1["moments"], atol=1e-6, rtol=0)
    assert torch.equal(step1, step2)
    (grad,) = torch.autograd.grad(outer_loss(losses2).sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_the_valid_objective_measures_other_minibatches_at_the_same_weights():
    batch, learner = small_batch(), nominal()
    theta, w, state, step, horizon = start(batch, learner)
    _, _, _, train = unroll(batch, learner, theta, w, state, step, horizon, 4, "train")
    w_v, _, _, valid = unroll(batch, learner, theta, w, state, step, horizon, 4, "valid")
    w_t, _, _, _ = unroll(batch, learner, theta, w, state, step, horizon, 4, "train")
    assert torch.equal(w_t, w_v)  # the inner steps still train on the training minibatches
    assert not torch.allclose(train, valid)
    # the validation minibatches are the problem's (seed, step): the same for both rows of a pair
    assert torch.equal(batch.batch_indices(step, 4, "valid"), batch.batch_indices(step, 4, "valid"))
    first = batch.batch_indices(step, 4, "valid")[0, 0]
    _, y_valid = batch.minibatch(first.unsqueeze(0).expand(batch.size, -1), "valid")
    assert y_valid.shape == (batch.size, batch.spec.batch_size)


@pytest.mark.parametrize("first_order", [False, True])
def test_the_theta_gradient_matches_finite_differences(first_order):
    """float64, 3 problems, 6 steps of nominal_mlp: the directional derivative of the summed
    outer loss along a random direction, by autograd and by central differences."""
    batch, learner = small_batch(torch.float64, 3), nominal()
    theta, w, state, step, horizon = start(batch, learner, theta_scale=0.3)

    def total(th: torch.Tensor) -> torch.Tensor:
        _, _, _, losses = unroll_with_graph(
            batch, learner, th, w, state, step, horizon, 6, first_order=first_order
        )
        return outer_loss(losses).sum()

    leaf = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(total(leaf), leaf)
    direction = torch.randn(
        theta.shape, generator=torch.Generator().manual_seed(3), dtype=theta.dtype
    )
    h = 1e-6  # float64; larger steps cross the learner's ReLU kinks (1.8e-4 off at 1e-5)
    with torch.no_grad():
        numeric = float((total(theta + h * direction) - total(theta - h * direction)) / (2 * h))
    analytic = float((grad * direction).sum())
    if first_order:  # the inner gradients held constant: not the derivative of the loss
        assert abs(analytic - numeric) > 1e-3 * abs(numeric)
    else:
        assert analytic == pytest.approx(numeric, rel=3e-5)


def test_merged_equals_the_per_problem_implementation_on_the_same_problem():
    """6 pairs of one architecture, each truncation from step 0, nominal_mlp (horizon 60). The
    per-problem loop (harness.meta.estimators.antithetic_pair, rp through both unrolls, outer
    loss ``log`` on the next inner batch) runs T = 5 steps on the engine's own minibatches; the
    engine runs T + 1 (its outer loss is at each step's weights before the update: the extra
    first term is the same in both rows and has no theta gradient), so every engine sample is
    T / (T + 1) times the loop's. The merged gradient is the per-problem merge of the loop's
    (scaled) samples."""
    pairs, steps, sigma = 6, 5, 0.01
    learner = nominal(horizon=60)
    schedule = PairSchedule("mlp_mix", 3, steps + 1, 60, 60, stagger=False, arch_groups=1)
    theta = learner.init_theta(0) + 0.1 * torch.randn(
        learner.num_theta, generator=torch.Generator().manual_seed(5)
    )
    noises = torch.randn(pairs, learner.num_theta, generator=torch.Generator().manual_seed(6))
    states = fresh_pairs(schedule, learner, [(p, 0) for p in range(pairs)], theta.numel(), False)
    estimator = MergedEstimator(sigma)
    samples, _, _, _ = estimator.step(schedule, learner, theta, noises, states)
    merged, metrics = estimator.combine(samples, World())
    assert 0.0 < metrics["es_weight"] < 1.0

    scale = steps / (steps + 1)
    sums = SampleSums(learner.num_theta, slots=("es", "rp"))
    for p, s in enumerate(states):
        spec = schedule_task(schedule, s)
        batch = ProblemBatch([spec], [s.init_seed])
        indices = batch.batch_indices([0], steps + 1)
        data = TruncationData(
            inner=[tuple(t[0] for t in batch.minibatch(indices[j])) for j in range(steps + 1)],
            outer=[None] * steps,
        )
        problems = InnerProblems(
            build_task(spec),
            learner,
            num_problems=1,
            horizon=60,
            outer_batches=1,
            objective="train",
            seed=0,
            loss="log",
            outer_data="inner",
        )
        moments = learner.init(batch.unflatten(s.w_plus))["moments"]
        state = InnerState(batch.unflatten(s.w_plus), {"moments": moments}, 0, 0)
        loop = antithetic_pair(problems, theta, noises[p], sigma, state, data, rp=True)
        torch.testing.assert_close(samples[p, 1], scale * loop.rp.double(), rtol=2e-3, atol=1e-6)
        torch.testing.assert_close(samples[p, 0], scale * loop.es.double(), rtol=2e-2, atol=1e-3)
        loop.estimates = {k: scale * v.double() for k, v in loop.estimates.items()}
        sums.add(loop, False)
    reference = inverse_variance_merge(sums, "es", "rp")
    assert reference.source == "merged"
    assert reference.es_weight == pytest.approx(metrics["es_weight"], rel=0.05)
    mine = merged.mean(0)
    assert float(torch.nn.functional.cosine_similarity(mine, reference.grad, dim=0)) > 0.999
    torch.testing.assert_close(mine, reference.grad, rtol=0.05, atol=2e-3)


def schedule_task(schedule: PairSchedule, s):
    from harness.meta.family.problems import family_task

    return family_task(schedule.family, s.task_seed, s.arch_seed)


def test_rp_and_es_agree_within_standard_errors_and_the_merge_sits_between():
    """128 pairs, one truncation of 5 steps from step 0, Adam with a learned log learning-rate
    multiplier (D = 1): rp and truncated ES are both unbiased for the gradient of the smoothed
    truncation loss; their paired difference is within 3 standard errors of 0; rp's variance
    is below ES's, so the merge leans to rp, with the paper's weights."""
    pairs = 128
    learner = BatchedAdam(lr=1e-3)
    schedule = PairSchedule("mlp_mix", 26, 5, 40, 40, stagger=False, arch_groups=1)
    theta = torch.zeros(1)
    noises = torch.randn(pairs, 1, generator=torch.Generator().manual_seed(11))
    states = fresh_pairs(schedule, learner, [(p, 0) for p in range(pairs)], 1, False)
    estimator = MergedEstimator(0.01)
    samples, result, _, _ = estimator.step(schedule, learner, theta, noises, states)
    es, rp = samples[:, 0, 0], samples[:, 1, 0]
    tes, _, _, _ = TruncatedESEstimator(0.01).step(schedule, learner, theta, noises, states)
    torch.testing.assert_close(es, tes[:, 0])  # the ES half is truncated ES's sample
    diff = rp - es
    z = float(diff.mean() / (diff.std() / math.sqrt(pairs)))
    assert abs(z) < 3.0
    assert float(rp.mean()) < 0  # a larger learning rate helps this short truncation
    assert float(rp.var()) < 0.5 * float(es.var())  # measured: 1.1e-4 against 5.1e-4
    merged, metrics = estimator.combine(samples, World())
    weight = float(rp.var()) / (float(rp.var()) + float(es.var()))
    assert metrics["es_weight"] == pytest.approx(weight, rel=1e-3)
    expected = weight * float(es.mean()) + (1 - weight) * float(rp.mean())
    assert float(merged.mean()) == pytest.approx(expected, rel=1e-4)  # the 1e-8 variance floor
    # the rp sample of a pair is the mean of its two rows' gradients
    again = antithetic_truncation(schedule, learner, theta, noises, 0.01, states, rp=True)
    torch.testing.assert_close(again.rp[:, 0], rp)
    assert torch.equal(again.loss_plus, result.loss_plus)


def test_a_pair_with_a_non_finite_part_is_dropped_whole():
    estimator = MergedEstimator(0.01)
    samples = torch.randn(4, 2, 3, dtype=torch.float64)
    samples[1, 1, 0] = math.nan
    merged, metrics = estimator.combine(samples, World())
    assert bool(torch.isnan(merged[1]).all())
    assert bool(torch.isfinite(merged[[0, 2, 3]]).all())
    assert math.isfinite(metrics["es_weight"])


# -- the command: estimator=merged, objective=valid ---------------------------------------------
TINY_RUN = TINY_FAMILY_RUN


@pytest.mark.parametrize("estimator", ["merged", "pes", "tes"])
def test_a_valid_objective_run_trains_and_logs_its_meters(tmp_path, estimator):
    from harness.meta.family.command import meta_train_family
    from harness.meta.family.trainer import LOG_FILE

    meta_train_family(
        {**TINY_RUN, "estimator": estimator, "objective": "valid", "out": str(tmp_path / "v")}
    )
    meta_train_family(
        {**TINY_RUN, "estimator": estimator, "outer_steps": 2, "out": str(tmp_path / "t")}
    )
    import pandas as pd

    valid = pd.read_csv(tmp_path / "v" / LOG_FILE)
    train = pd.read_csv(tmp_path / "t" / LOG_FILE)
    metrics = set(valid["metric"])
    for name in ("split_cosine", "snr", "control_split_cosine", "outer_loss", "heldout_loss"):
        assert name in metrics
    if estimator == "merged":
        weights = valid.loc[valid["metric"] == "es_weight", "value"]
        assert len(weights) == 2 and ((weights > 0) & (weights < 1)).all()
    first = lambda frame: float(  # noqa: E731
        frame.loc[(frame["metric"] == "outer_loss") & (frame["outer_step"] == 1), "value"].iloc[0]
    )
    assert first(valid) != first(train)  # the same pairs, measured on other minibatches
    assert valid["run_id"].iloc[0] != train["run_id"].iloc[0]


def test_objective_is_part_of_the_identity_and_train_runs_keep_their_ids(tmp_path):
    from harness.errors import UsageError
    from harness.meta.family.command import meta_train_family
    from harness.resolve import family_run_id
    from harness.settings.family import coerce_family_config

    plain = coerce_family_config(TINY_RUN)
    assert "objective" not in plain.identity()  # ids of runs made before the field: unchanged
    valid = coerce_family_config({**TINY_RUN, "objective": "valid"})
    assert valid.identity()["objective"] == "valid"
    assert family_run_id(valid, valid.identity()) != family_run_id(plain, plain.identity())
    out = str(tmp_path)
    meta_train_family({**TINY_RUN, "estimator": "tes", "outer_steps": 1, "out": out})
    with pytest.raises(UsageError, match="objective='train', now 'valid'"):
        meta_train_family(
            {**TINY_RUN, "estimator": "tes", "objective": "valid", "outer_steps": 2, "out": out}
        )
    with pytest.raises(UsageError, match="objective must be one of train, valid"):
        coerce_family_config({**TINY_RUN, "objective": "test"})


def test_the_merge_over_two_ranks_is_the_merge_over_all_pairs():
    """Each rank merges its own pairs with the variances of every rank's (one all-reduce of
    their sums): the two ranks' merged samples are the one process's."""

    class Recorder:
        def all_reduce_sum(self, vector: torch.Tensor) -> torch.Tensor:
            self.vector = vector.clone()
            return vector

    class TwoRanks:
        def __init__(self, other: torch.Tensor) -> None:
            self.other = other

        def all_reduce_sum(self, vector: torch.Tensor) -> torch.Tensor:
            return vector + self.other

    generator = torch.Generator().manual_seed(4)
    samples = torch.randn(8, 2, 5, generator=generator, dtype=torch.float64)
    samples[:, 1] *= 0.3  # rp with a smaller spread
    estimator = MergedEstimator(0.01)
    whole, metrics = estimator.combine(samples, World())
    rank_a, rank_b = Recorder(), Recorder()
    estimator.combine(samples[0::2], rank_a)
    estimator.combine(samples[1::2], rank_b)
    part_a, metrics_a = estimator.combine(samples[0::2], TwoRanks(rank_b.vector))
    part_b, _ = estimator.combine(samples[1::2], TwoRanks(rank_a.vector))
    torch.testing.assert_close(part_a, whole[0::2])
    torch.testing.assert_close(part_b, whole[1::2])
    assert metrics_a == pytest.approx(metrics)


def test_conv_nets_unroll_with_their_graph_through_the_vmap_backend():
    """conv_mix (no closed form): ``inner_grad=auto`` takes create_graph autograd of the vmap
    backend; the unroll is the engine's and its theta gradient is finite and nonzero."""
    tasks = sample_group("conv_mix", 3, [0, 1])
    batch, learner = ProblemBatch(tasks, [5, 6]), nominal()
    assert batch.functional is not None
    w = batch.init_params()
    state = learner.batched_init(w)
    theta = learner.init_theta(0).expand(2, -1).clone() + 0.05
    step, horizon = torch.zeros(2, dtype=torch.int64), torch.full((2,), 100, dtype=torch.int64)
    w1, _, _, losses1 = unroll(batch, learner, theta, w, state, step, horizon, 3, "valid")
    leaf = theta.clone().requires_grad_(True)
    w2, _, _, losses2 = unroll_with_graph(
        batch, learner, leaf, w, state, step, horizon, 3, objective="valid"
    )
    torch.testing.assert_close(losses2.detach(), losses1, atol=1e-6, rtol=0)
    torch.testing.assert_close(w2.detach(), w1, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(outer_loss(losses2).sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="closed-form inner gradient computes MLPs only"):
        unroll_with_graph(batch, learner, leaf, w, state, step, horizon, 1, inner_grad="closed")


@pytest.mark.slow
def test_merged_with_two_torchrun_workers_trains_like_one_process(tmp_path):
    """``parallel=processes``: the ranks all-reduce the ES and rp sums before merging, so two
    gloo ranks give the single process's theta (up to the order of float sums)."""
    from harness.meta.checkpoint import load_trainer_state
    from harness.meta.family.command import meta_train_family
    from harness.meta.family.trainer import STATE_FILE

    cfg = {**TINY_RUN, "estimator": "merged", "eval_every": 0}
    meta_train_family({**cfg, "out": str(tmp_path / "single")})
    meta_train_family(
        {**cfg, "out": str(tmp_path / "processes"), "parallel": "processes", "workers": 2}
    )
    single = load_trainer_state(tmp_path / "single" / STATE_FILE)
    processes = load_trainer_state(tmp_path / "processes" / STATE_FILE)
    torch.testing.assert_close(processes["theta"], single["theta"], rtol=0, atol=1e-5)
    assert not torch.equal(single["theta"], coerce_theta(single))


def coerce_theta(state) -> torch.Tensor:
    """The initial theta of the run ``state`` saved."""
    from harness.meta.truncation import STREAM_THETA, derive_seed

    learner = nominal()
    return learner.init_theta(derive_seed(state["config"]["seed"], STREAM_THETA)).float()
