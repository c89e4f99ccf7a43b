"""Gradient estimators of the smoothed outer loss: ES, rp, the paper's merge, and PES.

For one meta-example (a truncation of one inner problem) draw ``n ~ N(0, I)``, ``eps = sigma n``,
and unroll twice with the same batches (common random numbers): ``L+ = L(theta + eps)``,
``L- = L(theta - eps)``. Then

* ES (antithetic):        ``g_es = (L+ - L-) / (2 sigma) * n``
* reparameterisation:     ``g_rp = 1/2 * d/dtheta [L(theta + eps) + L(theta - eps)]``
  (backprop through both unrolls, through the inner gradients too unless ``first_order``).

Both are unbiased for the gradient of ``E_eps L(theta + eps)`` on that truncation, from the same
starting state (:class:`TruncatedEstimator`: the +eps unroll's final state goes on). Over the B
meta-examples of an outer step, per element j of theta (:func:`inverse_variance_merge`)::

    mu_es, var_es = mean and unbiased variance of the ES samples (+1e-8); the same for rp
    g = (mu_rp * var_es + mu_es * var_rp) / (var_rp + var_es)

PES (Vicol, Metz and Sohl-Dickstein, ICML 2021; learned_optimization's ``truncated_pes.py``)
keeps two inner states per problem, the +eps and the -eps trajectory, and the sum of the
perturbation directions ``N_k = n_1 + ... + n_k`` drawn so far in this inner run; the sample of
truncation k is ``(L+_k - L-_k) / (2 sigma) * N_k``. Summed over the truncations of an inner run
it is unbiased for the gradient of the smoothed loss of the whole run, not just of each
truncation (:class:`PESEstimator`). At a reset both states restart together and ``N`` is zeroed.

Every estimator reduces its samples to the same sufficient statistics: per kind of sample (its
*slots*: ``es``, ``rp``, ``pes``) the count, the sum and the sum of squares in float64
(:class:`SampleSums`), so a distributed run all-reduces one vector and every rank turns the same
totals into the same gradient (:meth:`GradientEstimator.gradient`). Non-finite samples never
enter the sums: they are dropped and counted, per slot.

In learned_optimization's vocabulary these are the *GradientEstimator*s; the truncations they
run are :class:`harness.meta.truncation.InnerProblems`' (the TruncatedStep).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from harness.meta.truncation import InnerProblems, InnerState, TruncationData

VARIANCE_FLOOR = 1e-8
#: the scalar statistics carried (and all-reduced) with the sums, in this order (then one
#: ``dropped_<slot>`` per slot)
STAT_NAMES = ("loss_sum", "loss_count", "length_sum", "problems", "resets")


# -- samples ---------------------------------------------------------------------------------------
@dataclass
class PairSample:
    """What one antithetic pair of unrolls gives.

    Attributes:
        loss_plus, loss_minus: ``L(theta + eps)`` and ``L(theta - eps)`` (Python floats).
        estimates: slot -> sample ``(P,)`` (``es``, ``rp``, ``pes``), those computed.
        final: the +eps unroll's final state.
        length: the unroll length.
        evaluated: whether the truncation has an outer loss (``loss=final``: only the last
            truncation of an inner run); its losses enter the logged mean only then.
        final_minus: the -eps unroll's final state (PES carries it; None otherwise).
    """

    loss_plus: float
    loss_minus: float
    estimates: dict[str, torch.Tensor]
    final: InnerState
    length: int
    evaluated: bool = True
    final_minus: InnerState | None = None

    @property
    def es(self) -> torch.Tensor | None:
        return self.estimates.get("es")

    @property
    def rp(self) -> torch.Tensor | None:
        return self.estimates.get("rp")


def es_sample(
    loss_plus: float, loss_minus: float, noise: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``(L+ - L-) / (2 sigma) * n``."""
    return noise * ((loss_plus - loss_minus) / (2.0 * sigma))


def grad_mode(rp: bool, first_order: bool) -> str:
    """The unroll's ``grad_mode``: ``none`` without rp, else ``first`` or ``second``."""
    return ("first" if first_order else "second") if rp else "none"


def antithetic_pair(
    problems: InnerProblems,
    theta: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    state: InnerState,
    data: TruncationData,
    *,
    rp: bool,
    first_order: bool = False,
    state_minus: InnerState | None = None,
) -> PairSample:
    """Both unrolls of one meta-example with ``data`` (loop version): the +eps one from
    ``state``, the -eps one from ``state_minus`` (default: ``state`` too).

    With ``rp`` each unroll is followed by its backward pass (the graph is freed before the
    next unroll starts, so the peak memory is one unroll's); without, both run without graphs.
    ``estimates`` holds ``es`` and, with ``rp``, ``rp``.
    """
    eps = sigma * noise
    losses: list[float] = []
    grads: list[torch.Tensor] = []
    finals: list[InnerState] = []
    mode = grad_mode(rp, first_order)
    starts = (state, state if state_minus is None else state_minus)
    for sign, start in zip((1.0, -1.0), starts, strict=True):
        perturbed = (theta.detach() + sign * eps).requires_grad_(rp)
        loss, end = problems.unroll(perturbed, start, data, grad_mode=mode)
        if rp:  # a truncation without an outer loss (loss=final) has a zero gradient
            evaluated = loss.requires_grad
            grads.append(
                torch.autograd.grad(loss, perturbed)[0]
                if evaluated
                else torch.zeros_like(perturbed.detach())
            )
        losses.append(float(loss.detach()))
        finals.append(end)
    estimates = {"es": es_sample(losses[0], losses[1], noise, sigma)}
    if rp:
        estimates["rp"] = 0.5 * (grads[0] + grads[1])
    return PairSample(
        loss_plus=losses[0],
        loss_minus=losses[1],
        estimates=estimates,
        final=finals[0],
        length=data.length,
        evaluated=data.evaluations > 0,
        final_minus=finals[1],
    )


def antithetic_pairs_batched(
    problems: InnerProblems,
    theta: torch.Tensor,
    noises: torch.Tensor,
    sigma: float,
    states: Sequence[InnerState],
    datas: Sequence[TruncationData],
    *,
    rp: bool,
    first_order: bool = False,
) -> list[PairSample]:
    """:func:`antithetic_pair` for every problem at once: one ``torch.func.vmap`` over the 2M
    unrolls (``noises`` is ``(M, P)``)."""
    count = len(states)
    eps = sigma * noises
    thetas = torch.cat([theta.detach() + eps, theta.detach() - eps])
    losses, grads, finals = problems.unroll_batched(
        thetas, list(states) * 2, list(datas) * 2, grad_mode=grad_mode(rp, first_order)
    )
    samples = []
    for i in range(count):
        plus, minus = float(losses[i]), float(losses[count + i])
        estimates = {"es": es_sample(plus, minus, noises[i], sigma)}
        if grads is not None:
            estimates["rp"] = 0.5 * (grads[i] + grads[count + i])
        samples.append(
            PairSample(
                loss_plus=plus,
                loss_minus=minus,
                estimates=estimates,
                final=finals[i],
                length=datas[i].length,
                final_minus=finals[count + i],
            )
        )
    return samples


# -- sums ------------------------------------------------------------------------------------------
def stat_names(slots: Sequence[str]) -> tuple[str, ...]:
    """The scalar statistics of sums over ``slots``: :data:`STAT_NAMES`, then the drop counts."""
    return (*STAT_NAMES, *(f"dropped_{slot}" for slot in slots))


@dataclass
class SampleSums:
    """Per slot the count, sum and sum of squares of the samples (float64), plus scalar
    statistics (:data:`STAT_NAMES`, then ``dropped_<slot>`` per slot).

    ``to_vector``/``from_vector`` pack everything into one float64 vector, the unit of the
    distributed all-reduce (a sum of SampleSums is the SampleSums of the union of samples).
    """

    size: int
    slots: tuple[str, ...] = ("es", "rp")
    counts: dict[str, float] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    sumsqs: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.slots = tuple(self.slots)
        for slot in self.slots:
            self.counts.setdefault(slot, 0.0)
            for table in (self.sums, self.sumsqs):
                if slot not in table:
                    table[slot] = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for name in self.stat_names():
            self.stats.setdefault(name, 0.0)

    def stat_names(self) -> tuple[str, ...]:
        return stat_names(self.slots)

    def add(self, sample: PairSample, reset: bool) -> None:
        """Count ``sample``: its finite estimates enter the sums, non-finite ones are dropped."""
        stats = self.stats
        stats["problems"] += 1
        stats["length_sum"] += sample.length
        stats["resets"] += float(reset)
        losses_finite = math.isfinite(sample.loss_plus) and math.isfinite(sample.loss_minus)
        if losses_finite and sample.evaluated:
            stats["loss_sum"] += 0.5 * (sample.loss_plus + sample.loss_minus)
            stats["loss_count"] += 1
        for slot in self.slots:
            value = sample.estimates.get(slot)
            if value is None:
                continue
            if bool(torch.isfinite(value).all()):
                value = value.detach().to(dtype=torch.float64, device=self.sums[slot].device)
                self.counts[slot] += 1
                self.sums[slot].add_(value)
                self.sumsqs[slot].addcmul_(value, value)
            else:
                stats[f"dropped_{slot}"] += 1

    def moments(self, slot: str) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``(mean, variance + 1e-8 or None, count)`` of ``slot``'s samples."""
        mean, variance = mean_and_variance(self.sums[slot], self.sumsqs[slot], self.counts[slot])
        return mean, variance, self.counts[slot]

    def to_vector(self) -> torch.Tensor:
        """``[sum, sumsq per slot, count per slot, *stats]`` (float64)."""
        ref = next(iter(self.sums.values())) if self.sums else torch.zeros(0)
        scalars = torch.tensor(
            [*(self.counts[s] for s in self.slots), *(self.stats[n] for n in self.stat_names())],
            dtype=torch.float64,
            device=ref.device,
        )
        blocks = [t for s in self.slots for t in (self.sums[s], self.sumsqs[s])]
        return torch.cat([*blocks, scalars])

    @classmethod
    def from_vector(
        cls, vector: torch.Tensor, size: int, slots: tuple[str, ...] = ("es", "rp")
    ) -> SampleSums:
        count = len(slots)
        parts = vector.split([size] * (2 * count) + [vector.numel() - 2 * count * size])
        values = parts[-1].tolist()
        return cls(
            size=size,
            slots=slots,
            counts=dict(zip(slots, values[:count], strict=True)),
            sums={s: parts[2 * i] for i, s in enumerate(slots)},
            sumsqs={s: parts[2 * i + 1] for i, s in enumerate(slots)},
            stats=dict(zip(stat_names(slots), values[count:], strict=True)),
            device=vector.device,
        )


@dataclass
class MergeResult:
    """An estimator's gradient (float64 ``(P,)``) and what to log about it.

    Attributes:
        grad: the estimate of the gradient of the smoothed outer loss (before clipping).
        es_weight: mean over elements of the weight of the zeroth-order estimate (ES or PES)
            in the merge, ``var_rp / (var_rp + var_es)`` (1: all ES, 0: all rp); 1 or 0 for a
            single estimator; NaN with no samples.
        variances: slot -> mean over elements of its sample variance (NaN if fewer than two
            samples).
        source: the slot the gradient came from, ``merged``, or ``none`` (no usable sample: no
            update).
    """

    grad: torch.Tensor
    es_weight: float
    variances: dict[str, float]
    source: str

    @property
    def var_es(self) -> float:
        return self.variances.get("es", math.nan)

    @property
    def var_rp(self) -> float:
        return self.variances.get("rp", math.nan)


def mean_and_variance(
    total: torch.Tensor, total_sq: torch.Tensor, count: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-element mean and unbiased variance + 1e-8 from count, sum and sum of squares
    (variance None when ``count < 2``)."""
    mean = total / max(count, 1.0)
    if count < 2:
        return mean, None
    variance = (total_sq - count * mean * mean).clamp_min(0.0) / (count - 1.0)
    return mean, variance + VARIANCE_FLOOR


def _variances(sums: SampleSums) -> dict[str, float]:
    out = {}
    for slot in sums.slots:
        _, variance, _ = sums.moments(slot)
        out[slot] = float(variance.mean()) if variance is not None else math.nan
    return out


def plain_mean(sums: SampleSums, slot: str) -> MergeResult:
    """The mean of ``slot``'s samples (no update when there are none)."""
    mean, _, count = sums.moments(slot)
    variances = _variances(sums)
    if count == 0:
        return MergeResult(torch.zeros_like(mean), math.nan, variances, "none")
    return MergeResult(mean, 0.0 if slot == "rp" else 1.0, variances, slot)


def inverse_variance_merge(sums: SampleSums, zeroth: str = "es", rp: str = "rp") -> MergeResult:
    """The paper's per-element inverse-variance combination of the ``zeroth`` (ES or PES) and
    ``rp`` samples (module docstring). When one of them has fewer than two finite samples (no
    variance), the other one's mean is used alone (the zeroth-order one preferred when neither
    has two)."""
    mu_es, var_es, count_es = sums.moments(zeroth)
    mu_rp, var_rp, count_rp = sums.moments(rp)
    if count_rp == 0:
        return plain_mean(sums, zeroth)
    if count_es == 0:
        return plain_mean(sums, rp)
    if var_es is None or var_rp is None:
        use_es = var_rp is None and (var_es is not None or count_es >= count_rp)
        return plain_mean(sums, zeroth if use_es else rp)
    total = var_rp + var_es
    grad = (mu_rp * var_es + mu_es * var_rp) / total
    return MergeResult(grad, float((var_rp / total).mean()), _variances(sums), "merged")


# -- the estimators --------------------------------------------------------------------------------
class GradientEstimator(ABC):
    """One way to estimate the gradient of the smoothed outer loss (learned_optimization's
    GradientEstimator).

    An estimator owns the persistent per-problem state it needs between outer steps (for the
    truncated ones the inner state; for PES two inner states and the accumulated perturbation),
    runs the unrolls of a truncation (:meth:`estimate`), and turns the all-reduced
    :class:`SampleSums` of its :attr:`slots` into a gradient (:meth:`gradient`). The trainer
    draws the randomness (lengths, batches, perturbations) and never looks at which estimator
    it drives.

    Args:
        sigma: standard deviation of the perturbation ``eps = sigma n``.
        first_order: rp without second-order terms (estimators that use rp).
    """

    name: ClassVar[str]
    #: the kinds of sample it adds to the sums
    slots: ClassVar[tuple[str, ...]]
    #: whether it can run its problems' unrolls in one ``torch.func.vmap``
    batchable: ClassVar[bool] = True

    def __init__(self, *, sigma: float, first_order: bool = False) -> None:
        self.sigma = sigma
        self.first_order = first_order

    # -- per-problem state ------------------------------------------------------------------------
    @abstractmethod
    def initial_state(self, problems: InnerProblems, problem: int) -> Any:
        """The state of ``problem`` at the first outer step."""

    @abstractmethod
    def position(self, state: Any) -> InnerState:
        """The inner state that fixes the truncation's batches and its length cap."""

    @abstractmethod
    def state_to_dict(self, state: Any) -> dict[str, Any]:
        """Plain data (tensors on the CPU) for checkpoints."""

    @abstractmethod
    def state_from_dict(self, data: dict[str, Any], device: torch.device) -> Any:
        """The inverse of :meth:`state_to_dict`."""

    # -- one outer step ---------------------------------------------------------------------------
    @abstractmethod
    def estimate(
        self,
        problems: InnerProblems,
        theta: torch.Tensor,
        noises: dict[int, torch.Tensor],
        states: dict[int, Any],
        datas: dict[int, TruncationData],
        *,
        batched: bool = False,
    ) -> dict[int, tuple[PairSample, Any, bool]]:
        """Per problem: ``(sample, next state, was_reset)`` of one truncation with ``datas``
        and perturbation directions ``noises`` (``batched``: one vmap over the problems)."""

    def new_sums(self, size: int, device: torch.device | str = "cpu") -> SampleSums:
        """Empty sums of this estimator's slots."""
        return SampleSums(size, slots=self.slots, device=device)

    @abstractmethod
    def gradient(self, sums: SampleSums) -> MergeResult:
        """The gradient estimate from the (all-reduced) sums."""


class TruncatedEstimator(GradientEstimator):
    """Antithetic pairs from one inner state per problem; the +eps final state goes on."""

    uses_rp: ClassVar[bool]

    def initial_state(self, problems: InnerProblems, problem: int) -> InnerState:
        return problems.initial_state(problem)

    def position(self, state: InnerState) -> InnerState:
        return state

    def state_to_dict(self, state: InnerState) -> dict[str, Any]:
        return state.to_dict()

    def state_from_dict(self, data: dict[str, Any], device: torch.device) -> InnerState:
        return InnerState.from_dict(data, device)

    def estimate(
        self,
        problems: InnerProblems,
        theta: torch.Tensor,
        noises: dict[int, torch.Tensor],
        states: dict[int, InnerState],
        datas: dict[int, TruncationData],
        *,
        batched: bool = False,
    ) -> dict[int, tuple[PairSample, InnerState, bool]]:
        order = list(states)
        if batched:
            pairs = antithetic_pairs_batched(
                problems,
                theta,
                torch.stack([noises[i] for i in order]),
                self.sigma,
                [states[i] for i in order],
                [datas[i] for i in order],
                rp=self.uses_rp,
                first_order=self.first_order,
            )
        else:
            pairs = [
                antithetic_pair(
                    problems,
                    theta,
                    noises[i],
                    self.sigma,
                    states[i],
                    datas[i],
                    rp=self.uses_rp,
                    first_order=self.first_order,
                )
                for i in order
            ]
        out = {}
        for i, pair in zip(order, pairs, strict=True):
            pair.estimates = {k: v for k, v in pair.estimates.items() if k in self.slots}
            state, reset = problems.advance(i, pair.final)
            out[i] = (pair, state, reset)
        return out


class ESEstimator(TruncatedEstimator):
    """Antithetic ES on each truncation (``estimator=es``)."""

    name = "es"
    slots = ("es",)
    uses_rp = False

    def gradient(self, sums: SampleSums) -> MergeResult:
        return plain_mean(sums, "es")


class RPEstimator(TruncatedEstimator):
    """Backprop through both unrolls of each truncation (``estimator=rp``)."""

    name = "rp"
    slots = ("rp",)
    uses_rp = True

    def gradient(self, sums: SampleSums) -> MergeResult:
        return plain_mean(sums, "rp")


class MergedEstimator(TruncatedEstimator):
    """The paper's inverse-variance merge of ES and rp (``estimator=merged``)."""

    name = "merged"
    slots = ("es", "rp")
    uses_rp = True

    def gradient(self, sums: SampleSums) -> MergeResult:
        return inverse_variance_merge(sums, "es", "rp")


@dataclass
class PESState:
    """A PES problem between truncations: both trajectories and ``N``, the sum of the
    perturbation directions drawn since the inner run started (``(P,)``)."""

    plus: InnerState
    minus: InnerState
    accumulated: torch.Tensor


class PESEstimator(GradientEstimator):
    """Persistent evolution strategies (``estimator=pes``), see the module docstring.

    Each truncation runs the +eps unroll from the +trajectory and the -eps one from the
    -trajectory on the same batches; ``N <- N + n``; the sample is ``(L+ - L-) / (2 sigma) N``.
    When either trajectory reaches the horizon or stops being finite, both restart from one
    fresh state and ``N = 0``. Loop only (``batchable`` is False).
    """

    name = "pes"
    slots = ("pes",)
    batchable = False

    def initial_state(self, problems: InnerProblems, problem: int) -> PESState:
        start = problems.initial_state(problem)
        size = problems.num_theta
        return PESState(start, start, torch.zeros(size, device=start.params[0].device))

    def position(self, state: PESState) -> InnerState:
        return state.plus

    def state_to_dict(self, state: PESState) -> dict[str, Any]:
        return {
            "plus": state.plus.to_dict(),
            "minus": state.minus.to_dict(),
            "accumulated": state.accumulated.detach().cpu(),
        }

    def state_from_dict(self, data: dict[str, Any], device: torch.device) -> PESState:
        return PESState(
            InnerState.from_dict(data["plus"], device),
            InnerState.from_dict(data["minus"], device),
            data["accumulated"].to(device),
        )

    def estimate(
        self,
        problems: InnerProblems,
        theta: torch.Tensor,
        noises: dict[int, torch.Tensor],
        states: dict[int, PESState],
        datas: dict[int, TruncationData],
        *,
        batched: bool = False,
    ) -> dict[int, tuple[PairSample, PESState, bool]]:
        del batched  # loop only
        out = {}
        for i, state in states.items():
            pair = antithetic_pair(
                problems,
                theta,
                noises[i],
                self.sigma,
                state.plus,
                datas[i],
                rp=False,
                state_minus=state.minus,
            )
            accumulated = state.accumulated + noises[i]
            scale = (pair.loss_plus - pair.loss_minus) / (2.0 * self.sigma)
            pair.estimates = {"pes": accumulated * scale}
            assert pair.final_minus is not None
            if problems.needs_reset(pair.final) or problems.needs_reset(pair.final_minus):
                fresh = problems.fresh_state(i, pair.final.instance + 1)
                out[i] = (pair, PESState(fresh, fresh, torch.zeros_like(accumulated)), True)
            else:
                out[i] = (pair, PESState(pair.final, pair.final_minus, accumulated), False)
        return out

    def gradient(self, sums: SampleSums) -> MergeResult:
        return plain_mean(sums, "pes")


#: the estimators ``estimator=NAME`` selects
ESTIMATORS: dict[str, type[GradientEstimator]] = {
    cls.name: cls for cls in (MergedEstimator, RPEstimator, ESEstimator, PESEstimator)
}


def create_estimator(name: str, *, sigma: float, first_order: bool = False) -> GradientEstimator:
    """The estimator ``name`` (one of :data:`ESTIMATORS`)."""
    return ESTIMATORS[name](sigma=sigma, first_order=first_order)
