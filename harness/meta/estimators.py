"""Gradient estimators of the smoothed outer loss, and the paper's inverse-variance merge.

For one meta-example (a truncation of one inner problem) draw ``n ~ N(0, I)``, ``eps = sigma n``,
and unroll twice from the same state with the same batches (common random numbers):
``L+ = L(theta + eps)``, ``L- = L(theta - eps)``. Then

* ES (antithetic):        ``g_es = (L+ - L-) / (2 sigma) * n``
* reparameterisation:     ``g_rp = 1/2 * d/dtheta [L(theta + eps) + L(theta - eps)]``
  (backprop through both unrolls, through the inner gradients too unless ``first_order``).

Both are unbiased for the gradient of ``E_eps L(theta + eps)`` on that truncation. Over the B
meta-examples of an outer step, per element j of theta (:func:`merge_moments`)::

    mu_es, var_es = mean and unbiased variance of the ES samples (+1e-8); the same for rp
    g = (mu_rp * var_es + mu_es * var_rp) / (var_rp + var_es)

The merge only needs, per estimator, the count, the sum and the sum of squares of the samples
(:class:`SampleSums`, in float64), so a distributed run all-reduces those and every rank merges
the same totals (:mod:`harness.meta.distributed`). Non-finite samples never enter the sums: they
are dropped and counted, per estimator.

In learned_optimization's vocabulary this is the *GradientEstimator*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from harness.meta.truncation import InnerProblems, InnerState, TruncationData

VARIANCE_FLOOR = 1e-8
#: the scalar statistics carried (and all-reduced) with the sums, in this order
STAT_NAMES = (
    "loss_sum",
    "loss_count",
    "dropped_es",
    "dropped_rp",
    "length_sum",
    "problems",
    "resets",
)


@dataclass
class PairSample:
    """What one antithetic pair of unrolls gives.

    Attributes:
        loss_plus, loss_minus: ``L(theta + eps)`` and ``L(theta - eps)`` (Python floats).
        es: the ES sample ``(P,)``, or None if not computed.
        rp: the rp sample ``(P,)``, or None if not computed (estimator ``es``).
        final: the +eps unroll's final state (the state carried to the next truncation).
        length: the unroll length.
    """

    loss_plus: float
    loss_minus: float
    es: torch.Tensor | None
    rp: torch.Tensor | None
    final: InnerState
    length: int


def es_sample(
    loss_plus: float, loss_minus: float, noise: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``(L+ - L-) / (2 sigma) * n``."""
    return noise * ((loss_plus - loss_minus) / (2.0 * sigma))


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
) -> PairSample:
    """Both unrolls of one meta-example, from ``state`` with ``data`` (loop version).

    With ``rp`` each unroll is followed by its backward pass (the graph is freed before the
    next unroll starts, so the peak memory is one unroll's); without, both run without graphs.
    """
    eps = sigma * noise
    losses: list[float] = []
    grads: list[torch.Tensor] = []
    final: InnerState | None = None
    mode = ("first" if first_order else "second") if rp else "none"
    for sign in (1.0, -1.0):
        perturbed = (theta.detach() + sign * eps).requires_grad_(rp)
        loss, end = problems.unroll(perturbed, state, data, grad_mode=mode)
        if rp:
            (grad,) = torch.autograd.grad(loss, perturbed)
            grads.append(grad)
        losses.append(float(loss.detach()))
        if final is None:
            final = end
    assert final is not None
    return PairSample(
        loss_plus=losses[0],
        loss_minus=losses[1],
        es=es_sample(losses[0], losses[1], noise, sigma),
        rp=0.5 * (grads[0] + grads[1]) if rp else None,
        final=final,
        length=data.length,
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
    mode = ("first" if first_order else "second") if rp else "none"
    losses, grads, finals = problems.unroll_batched(
        thetas, list(states) * 2, list(datas) * 2, grad_mode=mode
    )
    samples = []
    for i in range(count):
        plus, minus = float(losses[i]), float(losses[count + i])
        samples.append(
            PairSample(
                loss_plus=plus,
                loss_minus=minus,
                es=es_sample(plus, minus, noises[i], sigma),
                rp=0.5 * (grads[i] + grads[count + i]) if grads is not None else None,
                final=finals[i],
                length=datas[i].length,
            )
        )
    return samples


# -- sums and the merge ----------------------------------------------------------------------------
@dataclass
class SampleSums:
    """Per-estimator count, sum and sum of squares of samples (float64), plus scalar statistics.

    ``to_vector``/``from_vector`` pack everything into one float64 vector, the unit of the
    distributed all-reduce (a sum of SampleSums is the SampleSums of the union of samples).
    """

    size: int
    es_count: float = 0.0
    es_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    es_sumsq: torch.Tensor = field(default=None)  # type: ignore[assignment]
    rp_count: float = 0.0
    rp_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    rp_sumsq: torch.Tensor = field(default=None)  # type: ignore[assignment]
    stats: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAT_NAMES, 0.0))
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        for name in ("es_sum", "es_sumsq", "rp_sum", "rp_sumsq"):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros(self.size, dtype=torch.float64, device=self.device))

    def add(self, sample: PairSample, reset: bool) -> None:
        """Count ``sample``: its finite estimates enter the sums, non-finite ones are dropped."""
        stats = self.stats
        stats["problems"] += 1
        stats["length_sum"] += sample.length
        stats["resets"] += float(reset)
        losses_finite = math.isfinite(sample.loss_plus) and math.isfinite(sample.loss_minus)
        if losses_finite:
            stats["loss_sum"] += 0.5 * (sample.loss_plus + sample.loss_minus)
            stats["loss_count"] += 1
        if sample.es is not None:
            if losses_finite and bool(torch.isfinite(sample.es).all()):
                self._accumulate("es", sample.es)
            else:
                stats["dropped_es"] += 1
        if sample.rp is not None:
            if bool(torch.isfinite(sample.rp).all()):
                self._accumulate("rp", sample.rp)
            else:
                stats["dropped_rp"] += 1

    def _accumulate(self, name: str, sample: torch.Tensor) -> None:
        value = sample.detach().to(dtype=torch.float64, device=self.es_sum.device)
        setattr(self, f"{name}_count", getattr(self, f"{name}_count") + 1)
        getattr(self, f"{name}_sum").add_(value)
        getattr(self, f"{name}_sumsq").addcmul_(value, value)

    def to_vector(self) -> torch.Tensor:
        """``[es_sum, es_sumsq, rp_sum, rp_sumsq, es_count, rp_count, *stats]`` (float64)."""
        scalars = torch.tensor(
            [self.es_count, self.rp_count, *(self.stats[n] for n in STAT_NAMES)],
            dtype=torch.float64,
            device=self.es_sum.device,
        )
        return torch.cat([self.es_sum, self.es_sumsq, self.rp_sum, self.rp_sumsq, scalars])

    @classmethod
    def from_vector(cls, vector: torch.Tensor, size: int) -> SampleSums:
        scalar_count = vector.numel() - 4 * size
        es_sum, es_sumsq, rp_sum, rp_sumsq, scalars = vector.split([size] * 4 + [scalar_count])
        values = scalars.tolist()
        return cls(
            size=size,
            es_count=values[0],
            es_sum=es_sum,
            es_sumsq=es_sumsq,
            rp_count=values[1],
            rp_sum=rp_sum,
            rp_sumsq=rp_sumsq,
            stats=dict(zip(STAT_NAMES, values[2:], strict=True)),
            device=vector.device,
        )


@dataclass
class MergeResult:
    """The merged gradient (float64 ``(P,)``) and what to log about it.

    Attributes:
        grad: the estimate of the gradient of the smoothed outer loss (before clipping).
        es_weight: mean over elements of ``var_rp / (var_rp + var_es)`` (1: all ES, 0: all rp);
            NaN when only one estimator had samples.
        var_es, var_rp: mean over elements of each estimator's sample variance (NaN if fewer
            than two samples).
        source: ``merged``, ``es``, ``rp`` or ``none`` (no usable sample: no update).
    """

    grad: torch.Tensor
    es_weight: float
    var_es: float
    var_rp: float
    source: str


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


def merge_moments(sums: SampleSums, estimator: str) -> MergeResult:
    """The gradient estimate of ``estimator`` (``merged``, ``es`` or ``rp``) from the sums.

    ``merged`` is the per-element inverse-variance combination of the module docstring; when one
    estimator has fewer than two finite samples (no variance), the other one's mean is used
    alone (ES preferred when neither has two). ``es`` and ``rp`` are the plain means.
    """
    mu_es, var_es = mean_and_variance(sums.es_sum, sums.es_sumsq, sums.es_count)
    mu_rp, var_rp = mean_and_variance(sums.rp_sum, sums.rp_sumsq, sums.rp_count)
    var_es_mean = float(var_es.mean()) if var_es is not None else math.nan
    var_rp_mean = float(var_rp.mean()) if var_rp is not None else math.nan
    nothing = torch.zeros_like(sums.es_sum)
    if estimator == "es" or (estimator == "merged" and sums.rp_count == 0):
        if sums.es_count == 0:
            return MergeResult(nothing, math.nan, var_es_mean, var_rp_mean, "none")
        return MergeResult(mu_es, 1.0, var_es_mean, var_rp_mean, "es")
    if estimator == "rp" or sums.es_count == 0:
        if sums.rp_count == 0:
            return MergeResult(nothing, math.nan, var_es_mean, var_rp_mean, "none")
        return MergeResult(mu_rp, 0.0, var_es_mean, var_rp_mean, "rp")
    if var_es is None or var_rp is None:
        use_es = var_rp is None and (var_es is not None or sums.es_count >= sums.rp_count)
        if use_es:
            return MergeResult(mu_es, 1.0, var_es_mean, var_rp_mean, "es")
        return MergeResult(mu_rp, 0.0, var_es_mean, var_rp_mean, "rp")
    total = var_rp + var_es
    grad = (mu_rp * var_es + mu_es * var_rp) / total
    weight_es = float((var_rp / total).mean())
    return MergeResult(grad, weight_es, var_es_mean, var_rp_mean, "merged")
