"""Gradient estimators on the batched engine: PES, truncated ES and the paper's merged estimator
(and whole-run ES, the reference they are tested against).

For pair ``i`` at outer step k, ``n ~ N(0, I)`` (``[D]``), the +eps row runs ``theta + sigma n``
and the -eps row ``theta - sigma n`` for one truncation on the same minibatches; ``L+``, ``L-``
are their outer losses (the mean over the truncation's steps of the log of the clipped minibatch
loss, :func:`harness.meta.family.problems.outer_loss`).

* PES (``pes``; Vicol, Metz and Sohl-Dickstein 2021; learned_optimization's
  ``truncated_pes.py``): the two rows keep their own trajectories from truncation to truncation,
  ``N <- N + n`` sums the directions drawn in this inner run, and the sample is
  ``(L+ - L-) / (2 sigma) * N``. Averaged over the truncations of an inner run it is unbiased for
  the gradient of the smoothed whole-run loss.
* Truncated ES (``tes``): both rows start every truncation from the +eps row's last state and
  the sample is ``(L+ - L-) / (2 sigma) * n``: unbiased for one truncation from a fixed state,
  biased for the whole run (it ignores theta's effect on where the truncation starts).

Every sample is float64 ``[D]``; the trainer reduces them to :class:`SampleSums`
(:meth:`FamilyEstimator.combine` first, which only the merged estimator needs).

* The paper's merged estimator (``merged``; Metz et al. 2019): truncated like ``tes`` (both
  rows from the +eps row's state), each pair gives its ES sample and its reparameterisation
  sample ``rp = 1/2 d/dtheta [L(theta + eps) + L(theta - eps)]`` (backprop through both rows'
  truncation on the engine's differentiable unroll, :mod:`harness.meta.batched.differentiable`).
  Per element j, the variances of the two over the outer step's pairs (all ranks: one
  all-reduce of their :class:`SampleSums`) give the weight of ES, ``w_j = var_rp / (var_rp +
  var_es)``, and each pair's merged sample is ``w es + (1 - w) rp``; their mean is the paper's
  ``(mu_rp var_es + mu_es var_rp) / (var_rp + var_es)``
  (:func:`harness.meta.estimators.inverse_variance_merge`), and the meters see the merged
  samples. A pair whose ES or rp sample is not finite is dropped whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from harness.meta.estimators import SampleSums, mean_and_variance
from harness.meta.family.pairs import (
    PairSchedule,
    PairState,
    Truncation,
    antithetic_truncation,
    fresh_pairs,
    next_states,
)


class FamilyEstimator(ABC):
    """How the pairs' truncations become gradient samples.

    Attributes:
        name: ``estimator=NAME``.
        two_trajectories: whether each pair keeps a -eps trajectory of its own (PES) or
            restarts both rows from the +eps one at every truncation.
    """

    name: ClassVar[str]
    two_trajectories: ClassVar[bool]

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    @abstractmethod
    def samples(
        self, result: Truncation, noises: torch.Tensor, accumulated: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The samples ``[P, D]`` (float64) and each pair's new accumulated direction."""

    def step(
        self,
        schedule: PairSchedule,
        learner: Any,
        theta: torch.Tensor,
        noises: torch.Tensor,
        states: Sequence[PairState],
        outer_step: int = 0,
    ) -> tuple[torch.Tensor, Truncation, list[PairState], list[bool]]:
        """One truncation (of outer step ``outer_step``) of every pair in ``states`` with
        directions ``noises`` (``[P, D]``): the samples, the truncation, the pairs' next states
        and which were reset."""
        result = antithetic_truncation(schedule, learner, theta, noises, self.sigma, states)
        samples, accumulated = self.samples(result, noises, [s.accumulated for s in states])
        new, resets = next_states(
            schedule, learner, states, result, accumulated, self.two_trajectories, outer_step
        )
        return samples, result, new, resets

    def combine(self, samples: torch.Tensor, world: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's per-pair samples ``[P, D]`` from what :meth:`step` gave, and metrics to
        log (collective: every rank calls it). PES and TES: the samples themselves."""
        del world
        return samples, {}

    def scale(self, result: Truncation) -> torch.Tensor:
        """``(L+ - L-) / (2 sigma)`` per pair (``[P, 1]``, float64)."""
        return ((result.loss_plus - result.loss_minus) / (2.0 * self.sigma))[:, None]


class PESEstimator(FamilyEstimator):
    """Persistent ES: ``(L+ - L-) / (2 sigma) * N``, ``N`` the directions summed so far."""

    name = "pes"
    two_trajectories = True

    def samples(
        self, result: Truncation, noises: torch.Tensor, accumulated: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        summed = torch.stack(list(accumulated)).double() + noises.double()
        return self.scale(result) * summed, list(summed)


class TruncatedESEstimator(FamilyEstimator):
    """Antithetic ES on each truncation: ``(L+ - L-) / (2 sigma) * n``."""

    name = "tes"
    two_trajectories = False

    def samples(
        self, result: Truncation, noises: torch.Tensor, accumulated: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.scale(result) * noises.double(), list(accumulated)


class MergedEstimator(FamilyEstimator):
    """The paper's inverse-variance merge of truncated ES and rp (module docstring).

    :meth:`step` gives ``[P, 2, D]``: per pair its ES sample and its rp sample;
    :meth:`combine` all-reduces their sums and gives the merged per-pair samples ``[P, D]``.
    """

    name = "merged"
    two_trajectories = False
    SLOTS = ("es", "rp")

    def __init__(self, sigma: float, first_order: bool = False) -> None:
        super().__init__(sigma)
        self.first_order = first_order

    def step(
        self,
        schedule: PairSchedule,
        learner: Any,
        theta: torch.Tensor,
        noises: torch.Tensor,
        states: Sequence[PairState],
        outer_step: int = 0,
    ) -> tuple[torch.Tensor, Truncation, list[PairState], list[bool]]:
        result = antithetic_truncation(
            schedule, learner, theta, noises, self.sigma, states, rp=True
        )
        assert result.rp is not None
        es = self.scale(result) * noises.double()
        samples = torch.stack([es, result.rp.double()], dim=1)
        new, resets = next_states(
            schedule,
            learner,
            states,
            result,
            [s.accumulated for s in states],
            False,
            outer_step,
        )
        return samples, result, new, resets

    def samples(
        self, result: Truncation, noises: torch.Tensor, accumulated: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The ES part alone (the rp part needs the differentiable unroll: :meth:`step`)."""
        return self.scale(result) * noises.double(), list(accumulated)

    def combine(self, samples: torch.Tensor, world: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Merged per-pair samples ``[P, D]`` (NaN rows: pairs dropped) and ``es_weight`` (the
        mean over elements of ES's weight), ``var_es``, ``var_rp`` (means over elements)."""
        size = samples.shape[-1]
        sums = SampleSums(size, slots=self.SLOTS)
        keep = torch.isfinite(samples).flatten(1).all(dim=1)
        for j in torch.nonzero(keep).flatten().tolist():
            for k, slot in enumerate(self.SLOTS):
                value = samples[j, k].double()
                sums.counts[slot] += 1
                sums.sums[slot].add_(value)
                sums.sumsqs[slot].addcmul_(value, value)
        total = world.all_reduce_sum(sums.to_vector())
        merged = SampleSums.from_vector(total, size, self.SLOTS)
        variances = {
            slot: mean_and_variance(merged.sums[slot], merged.sumsqs[slot], merged.counts[slot])[1]
            for slot in self.SLOTS
        }
        var_es, var_rp = variances["es"], variances["rp"]
        if var_es is None or var_rp is None:  # fewer than two usable pairs: ES alone
            weight = torch.ones(size, dtype=torch.float64)
        else:
            weight = var_rp / (var_rp + var_es)
        out = weight * samples[:, 0].double() + (1.0 - weight) * samples[:, 1].double()
        out[~keep] = torch.nan
        metrics = {
            "es_weight": float(weight.mean()),
            "var_es": float(var_es.mean()) if var_es is not None else float("nan"),
            "var_rp": float(var_rp.mean()) if var_rp is not None else float("nan"),
        }
        return out, metrics


#: the estimators ``estimator=NAME`` selects
FAMILY_ESTIMATORS: dict[str, type[FamilyEstimator]] = {
    cls.name: cls for cls in (PESEstimator, TruncatedESEstimator, MergedEstimator)
}


def create_family_estimator(name: str, sigma: float) -> FamilyEstimator:
    return FAMILY_ESTIMATORS[name](sigma)


# -- whole inner runs: the reference, and the estimators summed over one run ----------------------
def whole_run_es(
    schedule: PairSchedule,
    learner: Any,
    theta: torch.Tensor,
    noises: torch.Tensor,
    sigma: float,
    pairs: Sequence[int],
) -> torch.Tensor:
    """Whole-run antithetic ES: pair ``pairs[i]``'s first inner run (no stagger) twice, with
    ``theta +- sigma noises[i]`` for its whole horizon; the sample is
    ``(L+ - L-) / (2 sigma) * n`` with ``L`` the mean of the truncations' outer losses (the
    whole run's mean log loss). Returns ``[P, D]`` float64."""
    states = fresh_pairs(schedule, learner, [(p, 0) for p in pairs], theta.numel(), True)
    totals = torch.zeros(len(states), dtype=torch.float64)
    counts = torch.zeros(len(states), dtype=torch.float64)
    while states:
        result = antithetic_truncation(schedule, learner, theta, noises, sigma, states)
        totals += result.loss_plus - result.loss_minus
        counts += 1.0
        for j, s in enumerate(states):
            s.step = result.plus.step[j]
            s.w_plus, s.state_plus = result.plus.w[j], result.plus.state[j]
            s.w_minus, s.state_minus = result.minus.w[j], result.minus.state[j]
        if all(s.step >= s.horizon for s in states):
            break
        if any(s.step >= s.horizon for s in states):
            raise ValueError("whole_run_es needs the same horizon for every pair")
    return (totals / counts / (2.0 * sigma))[:, None] * noises.double()


def whole_run_mean(
    estimator: FamilyEstimator,
    schedule: PairSchedule,
    learner: Any,
    theta: torch.Tensor,
    noise_at: Any,
    pairs: Sequence[int],
) -> torch.Tensor:
    """``estimator``'s samples averaged over the truncations of each pair's first inner run
    (no stagger, theta fixed): its estimate of the gradient of the whole run's mean outer loss.
    ``noise_at(k)`` gives the directions ``[P, D]`` of truncation ``k``. Returns ``[P, D]``."""
    states = fresh_pairs(
        schedule, learner, [(p, 0) for p in pairs], theta.numel(), estimator.two_trajectories
    )
    horizon = states[0].horizon
    if any(s.horizon != horizon for s in states):
        raise ValueError("whole_run_mean needs the same horizon for every pair")
    count = horizon // schedule.truncation
    total = torch.zeros(len(states), theta.numel(), dtype=torch.float64)
    for k in range(count):
        samples, _, states, _ = estimator.step(schedule, learner, theta, noise_at(k), states)
        total += samples
    return total / count
