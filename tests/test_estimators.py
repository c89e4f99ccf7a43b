"""ES, rp and the inverse-variance merge: unbiasedness on the quadratic task, the merge rule,
dropping non-finite samples, and the loop and vmap paths agreeing."""

from __future__ import annotations

import math

import pytest
import torch

from harness.meta.estimators import (
    PairSample,
    SampleSums,
    antithetic_pair,
    antithetic_pairs_batched,
    inverse_variance_merge,
    plain_mean,
)
from harness.meta.truncation import InnerProblems, InnerState, TruncationData
from optimizers.learned import LOptArchitecture, MLPLearner
from tasks.quadratic import Quadratic

SIGMA = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting() -> tuple[InnerProblems, torch.Tensor, InnerState, TruncationData]:
    """A small learned optimizer (P = 90) on a noisy 4-d quadratic; one fixed truncation (5
    steps, K = 2) from a fixed state, so L(theta) is a deterministic function."""
    arch = LOptArchitecture(hidden_sizes=(4,), step_mult=0.05)
    task = Quadratic(dim=4, condition=10.0, noise=0.5, batch_size=4)
    lopt = MLPLearner.of(arch)
    problems = InnerProblems(
        task, lopt, num_problems=1, horizon=100, outer_batches=2, objective="train", seed=0
    )
    theta = torch.randn(arch.num_theta, generator=torch.Generator().manual_seed(1)) * 0.5
    state = problems.initial_state(0)
    return problems, theta, state, problems.data(0, state, 5)


def outer_losses(setting, thetas: torch.Tensor) -> torch.Tensor:
    problems, _theta, state, data = setting
    count = thetas.shape[0]
    losses, _, _ = problems.unroll_batched(
        thetas, [state] * count, [data] * count, grad_mode="none"
    )
    return losses.double()


def smoothed_directional_derivative(setting, u: torch.Tensor, samples: int, seed: int):
    """E_eps[u . grad L(theta + eps)] by central differences with common random numbers and
    Richardson extrapolation (h and h/2): an estimate that uses no autograd at all. Returns
    (estimate, standard error)."""
    _, theta, _, _ = setting
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(samples, theta.numel(), generator=generator) * SIGMA
    h = 0.02

    def difference(step: float) -> torch.Tensor:
        up = outer_losses(setting, theta + eps + step * u)
        down = outer_losses(setting, theta + eps - step * u)
        return (up - down) / (2 * step)

    values = (4 * difference(h / 2) - difference(h)) / 3
    return float(values.mean()), float(values.std() / math.sqrt(samples))


@pytest.mark.slow
def test_es_and_rp_are_unbiased_on_the_quadratic(setting) -> None:
    """Along the gradient direction and a random one, the means of 1,000 rp samples and of
    20,000 ES samples agree with the smoothed outer loss's directional derivative computed
    without autograd, within 4.5 combined standard errors (plus 0.1 % for float32)."""
    problems, theta, state, data = setting
    generator = torch.Generator().manual_seed(2)
    size = theta.numel()

    noise = torch.randn(1000, size, generator=generator)
    pairs = antithetic_pairs_batched(
        problems, theta, noise, SIGMA, [state] * 1000, [data] * 1000, rp=True
    )
    rp = torch.stack([p.rp for p in pairs]).double()
    noise = torch.randn(20000, size, generator=generator)
    pairs = antithetic_pairs_batched(
        problems, theta, noise, SIGMA, [state] * 20000, [data] * 20000, rp=False
    )
    es = torch.stack([p.es for p in pairs]).double()
    assert all(p.rp is None for p in pairs)

    gradient = rp.mean(0)
    random = torch.randn(size, generator=generator, dtype=torch.float64)
    for u in (gradient / gradient.norm(), random / random.norm()):
        truth, truth_se = smoothed_directional_derivative(setting, u.float(), 5000, seed=3)
        for name, samples in (("rp", rp), ("es", es)):
            projected = samples @ u
            estimate = float(projected.mean())
            se = float(projected.std() / math.sqrt(len(projected)))
            tolerance = 4.5 * math.hypot(se, truth_se) + 1e-3 * abs(truth)
            assert abs(estimate - truth) <= tolerance, (name, estimate, truth, se, truth_se)
    # the test has power: along the gradient the signal is many standard errors of ES
    along = es @ (gradient / gradient.norm())
    assert abs(float(along.mean())) > 10 * float(along.std()) / math.sqrt(len(along))


def test_rp_sample_is_the_gradient_of_both_unrolls(setting) -> None:
    """For one perturbation, g_rp = 1/2 (grad L(theta + eps) + grad L(theta - eps)) through the
    inner gradients (second order): checked against central differences per direction; the
    first-order option differs (it drops those terms)."""
    problems, theta, state, data = setting
    noise = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(5))
    sample = antithetic_pair(problems, theta, noise, SIGMA, state, data, rp=True)
    first = antithetic_pair(problems, theta, noise, SIGMA, state, data, rp=True, first_order=True)
    generator = torch.Generator().manual_seed(6)
    for _ in range(3):
        u = torch.randn(theta.numel(), generator=generator)
        u /= u.norm()
        h = 0.02
        points = torch.stack(
            [theta + s * SIGMA * noise + d * u for s in (1, -1) for d in (h, -h, h / 2, -h / 2)]
        )
        values = outer_losses(setting, points).view(2, 4)
        fd = (4 * (values[:, 2] - values[:, 3]) / h - (values[:, 0] - values[:, 1]) / (2 * h)) / 3
        torch.testing.assert_close(
            float(sample.rp.double() @ u.double()), float(fd.mean()), rtol=2e-3, atol=1e-6
        )
    assert not torch.allclose(sample.rp, first.rp, rtol=1e-3)
    assert sample.es is not None and sample.loss_plus != sample.loss_minus
    torch.testing.assert_close(
        sample.es, noise * (sample.loss_plus - sample.loss_minus) / (2 * SIGMA)
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_loop_and_vmap_give_the_same_samples(setting, first_order: bool) -> None:
    """antithetic_pair (a Python loop) and antithetic_pairs_batched (torch.func.vmap, here
    with unequal unroll lengths, masked) give the same losses, samples and final states."""
    problems, theta, state, _ = setting
    other = InnerState(
        params=(state.params[0] + 0.3,),
        opt_state={"accumulators": state.opt_state["accumulators"] + 0.01},
        step=40,
        instance=0,
    )
    states = [state, other]
    datas = [problems.data(0, state, 5), problems.data(0, other, 3)]
    noise = torch.randn(2, theta.numel(), generator=torch.Generator().manual_seed(7))
    batched = antithetic_pairs_batched(
        problems, theta, noise, SIGMA, states, datas, rp=True, first_order=first_order
    )
    for i in range(2):
        loop = antithetic_pair(
            problems,
            theta,
            noise[i],
            SIGMA,
            states[i],
            datas[i],
            rp=True,
            first_order=first_order,
        )
        assert math.isclose(loop.loss_plus, batched[i].loss_plus, rel_tol=1e-5)
        assert math.isclose(loop.loss_minus, batched[i].loss_minus, rel_tol=1e-5)
        torch.testing.assert_close(loop.rp, batched[i].rp, rtol=1e-4, atol=1e-7)
        assert loop.final.step == batched[i].final.step == states[i].step + datas[i].length
        torch.testing.assert_close(loop.final.params, batched[i].final.params)


# -- the merge -------------------------------------------------------------------------------------
def sums_of(es: torch.Tensor | None, rp: torch.Tensor | None) -> SampleSums:
    """SampleSums of synthetic (B, P) sample batches."""
    size = (es if es is not None else rp).shape[1]
    count = (es if es is not None else rp).shape[0]
    sums = SampleSums(size)
    for i in range(count):
        sums.add(
            PairSample(
                loss_plus=1.0,
                loss_minus=1.0,
                estimates={k: v[i] for k, v in (("es", es), ("rp", rp)) if v is not None},
                final=None,  # type: ignore[arg-type]
                length=5,
            ),
            reset=False,
        )
    return sums


def test_merge_follows_the_lower_variance_estimator() -> None:
    """When rp's samples have 10^4 times less variance, the merged mean is rp's mean (ES weight
    ~ 0) and vice versa; per element, each element choosing its own weight."""
    generator = torch.Generator().manual_seed(0)
    truth_rp, truth_es = torch.full((6,), 1.0), torch.full((6,), -1.0)
    quiet = truth_rp + 0.01 * torch.randn(16, 6, generator=generator)
    loud = truth_es + 1.0 * torch.randn(16, 6, generator=generator)
    merged = inverse_variance_merge(sums_of(es=loud, rp=quiet))
    torch.testing.assert_close(merged.grad, quiet.double().mean(0), rtol=0, atol=1e-3)
    assert merged.es_weight < 1e-3 and merged.source == "merged"
    assert merged.var_es > 1e3 * merged.var_rp

    merged = inverse_variance_merge(sums_of(es=quiet, rp=loud))
    torch.testing.assert_close(merged.grad, quiet.double().mean(0), rtol=0, atol=1e-3)
    assert merged.es_weight > 1 - 1e-3

    mixed_es = torch.cat([quiet[:, :3], loud[:, 3:]], 1)
    mixed_rp = torch.cat([loud[:, :3], quiet[:, 3:]], 1)
    merged = inverse_variance_merge(sums_of(es=mixed_es, rp=mixed_rp))
    torch.testing.assert_close(merged.grad, quiet.double().mean(0), rtol=0, atol=1e-3)


def test_merge_with_equal_variances_is_the_plain_average() -> None:
    """Equal per-element variances (ES = rp samples shifted by a constant): the merge is
    (mu_rp + mu_es) / 2 and the ES weight 1/2; 'es' and 'rp' are the plain means."""
    rp = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    es = rp + torch.arange(5.0, dtype=torch.float64)
    sums = sums_of(es=es, rp=rp)
    merged = inverse_variance_merge(sums)
    torch.testing.assert_close(merged.grad, (es.mean(0) + rp.mean(0)) / 2)
    assert math.isclose(merged.es_weight, 0.5, rel_tol=1e-9)
    torch.testing.assert_close(plain_mean(sums, "es").grad, es.mean(0))
    torch.testing.assert_close(plain_mean(sums, "rp").grad, rp.mean(0))


def test_sums_all_reduce_by_addition() -> None:
    """The packed vector of the sums over all samples is the sum of the vectors over two halves
    (what the distributed all-reduce relies on), and unpacks to the same merge."""
    generator = torch.Generator().manual_seed(2)
    es, rp = torch.randn(10, 7, generator=generator), torch.randn(10, 7, generator=generator)
    whole = sums_of(es, rp)
    halves = sums_of(es[:4], rp[:4]).to_vector() + sums_of(es[4:], rp[4:]).to_vector()
    torch.testing.assert_close(halves, whole.to_vector())
    rebuilt = SampleSums.from_vector(halves, 7)
    assert rebuilt.counts["es"] == 10 and rebuilt.stats["problems"] == 10
    torch.testing.assert_close(
        inverse_variance_merge(rebuilt).grad, inverse_variance_merge(whole).grad
    )


def pair(loss_plus: float, loss_minus: float, es: torch.Tensor, rp: torch.Tensor) -> PairSample:
    return PairSample(loss_plus, loss_minus, {"es": es, "rp": rp}, None, 4)  # type: ignore[arg-type]


def test_non_finite_samples_are_dropped_and_counted() -> None:
    """A sample with a non-finite loss is dropped from ES, one with a non-finite gradient from
    rp; the merge falls back to the estimator that still has samples; nothing non-finite
    reaches the result."""
    good = torch.ones(3)
    sums = SampleSums(3)
    for index in range(4):
        sums.add(pair(1.0, 0.5, good * index, good), reset=False)  # type: ignore[arg-type]
    sums.add(pair(math.inf, 0.5, good * math.inf, good), reset=True)  # type: ignore[arg-type]
    sums.add(pair(1.0, 0.5, good, good * math.nan), reset=False)  # type: ignore[arg-type]
    assert sums.stats["dropped_es"] == 1 and sums.stats["dropped_rp"] == 1
    assert sums.counts["es"] == 5 and sums.counts["rp"] == 5 and sums.stats["resets"] == 1
    merged = inverse_variance_merge(sums)
    assert torch.isfinite(merged.grad).all()

    only_bad_rp = SampleSums(3)
    for _ in range(3):
        only_bad_rp.add(pair(1.0, 0.5, good, good * math.nan), reset=False)  # type: ignore[arg-type]
    merged = inverse_variance_merge(only_bad_rp)
    assert merged.source == "es" and torch.equal(merged.grad, good.double())
    nothing = inverse_variance_merge(SampleSums(3))
    assert nothing.source == "none" and torch.equal(
        nothing.grad, torch.zeros(3, dtype=torch.float64)
    )
