"""Gradient estimators on the batched engine: PES and truncated ES (and whole-run ES, the
reference they are tested against).

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

Every sample is float64 ``[D]``; the trainer reduces them to :class:`SampleSums`.

The paper's merged estimator (inverse-variance merge with a reparameterisation gradient) is not
here: it needs a differentiable unroll of the batched engine (autograd through the engine's
closed-form backward and the learner's ``batched_step``), which the engine does not promise.
The per-problem loop (:mod:`harness.meta.estimators`, ``estimator=merged``) keeps it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

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


#: the estimators ``estimator=NAME`` selects
FAMILY_ESTIMATORS: dict[str, type[FamilyEstimator]] = {
    cls.name: cls for cls in (PESEstimator, TruncatedESEstimator)
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
