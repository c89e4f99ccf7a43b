"""The arithmetic of ``nominal_mlp`` (one update of flat parameters), eager and fused.

One function of flat tensors serves a single problem (``w`` of shape ``(N,)``) and a batch of
problems of one architecture (``w`` of shape ``(B, N)``, one ``theta`` row per problem): every
per-problem scalar (time, bias corrections, learning rate) has shape ``(..., 1)`` and broadcasts
over the ``N`` parameters. Per update, with ``t = step + 1`` and the state's four rows
``m, m_fast, m_slow, v``::

    m      <- lerp(m, g, 1 - beta1);   v <- beta2 v + (1 - beta2) g^2        (Adam's moments)
    m_k    <- lerp(m_k, g, 1 - b_k)    for b_k in decays (2 more timescales)
    r       = 1 / (sqrt(v) / sqrt(1 - beta2^t) + eps)                      (Adam's denominator)
    u       = m / (1 - beta1^t) * r                                        (Adam's direction)
    x       = [u, g r, m_fast_hat r, m_slow_hat r, w / rms_tensor(w)]     (5 features, no units)
    phi     = [tanh(10 (step / horizon - c)) for c in centres] + [1]       (time in the run)
    h       = relu(W1 x + Wt phi + b1) [-> relu(W2 h + b2)]                (per parameter)
    d       = W3 . h                                                       (the learned term)
    w      <- w - lr0 exp(a . phi) (u + d)

The MLP's inputs are ratios (moments over Adam's root second moment, the weight over its
tensor's RMS), so ``d`` has no units: the learned term is in the units of Adam's direction,
and the step is ``lr0 exp(a . phi)`` times a unit-free direction, whatever the scale of the
gradients or of the weights (the output normalisation that lets one ``theta`` serve tasks of
any scale; :mod:`optimizers.nominal_mlp` states what exactly is invariant).

Two implementations of the MLP give the same numbers (to rounding, 1e-6 in the tests):

* :func:`update_eager`: features stacked ``(..., F, N)`` and matrix products; differentiable,
  correct under ``torch.func.vmap``, used with autograd, under vmap, where compiling fails, or
  when switched off;
* :func:`fused_update`: the same update written one scalar weight at a time, elementwise, which
  inductor (``torch.compile``) fuses with the features and the update into one loop over the
  parameters, after one small kernel for the per-problem :func:`coefficients`. Each weight's
  inverse RMS of its tensor is an ``(..., N)`` input computed outside (both entrances use
  this form; :func:`fused_update_indexed`, which gathers tensor norms by segment index inside
  the loop, is kept but slower: inductor does not vectorise the gather), so the compiled code
  does not depend on the architecture. It is traced once per process for each (settings,
  dtypes, device, rank) with symbolic sizes and compiled by inductor's ``standalone_compile``
  (:func:`compiled_update`), called without dynamo's per-call guards; a failed compile falls
  back to eager (:func:`run_fused`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

NUM_FEATURES = 5  # u, g r, m_fast r, m_slow r, w / rms(w)
NUM_MOMENTS = 4  # m (beta1), m_fast, m_slow, v (beta2)
RMS_EPS = 1e-12
#: set to 0 to switch the fused (compiled) path off in every nominal_mlp learner
COMPILE_ENV = "LOPT_NOMINAL_COMPILE"


@dataclass(frozen=True)
class KernelSpec:
    """The static structure of the update (hashable: the compile cache's key).

    Attributes:
        lr0: the base learning rate (Adam's, at the initial theta).
        hidden, layers: the MLP's width and number of hidden layers (1 or 2).
        beta1, beta2, eps: Adam's.
        decays: the two extra momentum timescales ``(fast, slow)``.
        centres: the centres ``c`` of the time features, as fractions of the horizon.
    """

    lr0: float
    hidden: int
    layers: int
    beta1: float
    beta2: float
    eps: float
    decays: tuple[float, float]
    centres: tuple[float, ...]

    @property
    def num_time(self) -> int:
        """Time features: one per centre, plus the constant."""
        return len(self.centres) + 1

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """theta's blocks, in order: ``a (S,)``, ``W1 (H, F)``, ``Wt (H, S)``, ``b1 (H,)``,
        then ``W2 (H, H)``, ``b2 (H,)`` with two layers, then ``W3 (H,)``."""
        h, s = self.hidden, self.num_time
        second = ((h, h), (h,)) if self.layers == 2 else ()
        return ((s,), (h, NUM_FEATURES), (h, s), (h,), *second, (h,))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    @property
    def names(self) -> tuple[str, ...]:
        """The blocks' names, in the order of :attr:`shapes` (``schedule`` is ``a``)."""
        second = ("W2", "b2") if self.layers == 2 else ()
        return ("schedule", "W1", "Wt", "b1", *second, "W3")


def unpack(spec: KernelSpec, theta: torch.Tensor) -> list[torch.Tensor]:
    """Views of ``theta (..., D)`` with the shapes of :attr:`KernelSpec.shapes` (leading dims
    kept: ``W1`` of a ``(B, D)`` theta is ``(B, H, F)``)."""
    lead = theta.shape[:-1]
    return [
        block.reshape(*lead, *shape)
        for block, shape in zip(theta.split(spec.sizes, -1), spec.shapes, strict=True)
    ]


#: columns of :func:`coefficients` before the first-layer shifts
C_M, C_V, C_FAST, C_SLOW, C_SCALE = range(5)


def coefficients(
    spec: KernelSpec, theta: torch.Tensor, step: torch.Tensor, horizon: torch.Tensor
) -> torch.Tensor:
    """Everything that is the same for all parameters of a problem, ``(..., 5 + H)``: the
    bias corrections ``1 - beta1^t``, ``sqrt(1 - beta2^t)`` (divisors, as in torch's Adam),
    ``1 / (1 - b_fast^t)``, ``1 / (1 - b_slow^t)``, the rate ``lr0 exp(a . phi)``, then the
    first layer's shift ``Wt phi + b1`` of each hidden unit (``t = step + 1``; ``phi`` from
    ``step / horizon``).

    One tensor, computed before the loop over the parameters: in the fused update inductor
    writes it once (a concatenation of more than 8 pieces is its own kernel) instead of
    evaluating the powers, tanh and exp again for every parameter.
    """
    dtype = theta.dtype
    # the bias corrections in float64 (1 - 0.999^t loses 4 digits in float32), as torch's Adam
    t = step.to(torch.float64).unsqueeze(-1) + 1.0  # (..., 1): this update's number
    fast, slow = spec.decays
    corrections = [
        1.0 - torch.pow(spec.beta1, t),
        torch.sqrt(1.0 - torch.pow(spec.beta2, t)),
        1.0 / (1.0 - torch.pow(fast, t)),
        1.0 / (1.0 - torch.pow(slow, t)),
    ]
    fraction = step.to(dtype).unsqueeze(-1) / horizon.to(dtype).unsqueeze(-1)
    phi = [torch.tanh(10.0 * (fraction - c)) for c in spec.centres]
    phi.append(torch.ones_like(fraction))
    a, _, wt, b1, *_ = unpack(spec, theta)
    columns = [c.to(dtype) for c in corrections]
    columns.append(
        spec.lr0 * torch.exp(sum(a[..., s, None] * phi[s] for s in range(spec.num_time)))
    )
    for k in range(spec.hidden):
        shift = b1[..., k, None] + sum(wt[..., k, s, None] * phi[s] for s in range(spec.num_time))
        columns.append(shift)
    return torch.cat(columns, -1)


def _moments_and_features(
    spec: KernelSpec,
    g: torch.Tensor,
    moments: torch.Tensor,
    coeffs: torch.Tensor,
    w_normalised: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(features [u, g r, m_fast_hat r, m_slow_hat r, w / rms(w)], new moments (..., 4, N))``
    (shared by both paths; elementwise throughout)."""

    def c(index: int) -> torch.Tensor:
        return coeffs[..., index, None]  # (..., 1)

    m_old, fast_old, slow_old, v_old = moments.unbind(-2)
    fast_decay, slow_decay = spec.decays
    m = torch.lerp(m_old, g, 1.0 - spec.beta1)
    fast = torch.lerp(fast_old, g, 1.0 - fast_decay)
    slow = torch.lerp(slow_old, g, 1.0 - slow_decay)
    v = v_old * spec.beta2 + (1.0 - spec.beta2) * g * g
    r = 1.0 / (sqrt_zero_grad(v) / c(C_V) + spec.eps)  # Adam's 1 / (sqrt(v_hat) + eps)
    features = [
        m / c(C_M) * r,  # Adam's direction u
        g * r,
        fast * c(C_FAST) * r,
        slow * c(C_SLOW) * r,
        w_normalised,
    ]
    return features, torch.stack([m, fast, slow, v], -2)


def update_eager(
    spec: KernelSpec,
    theta: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    moments: torch.Tensor,
    step: torch.Tensor,
    horizon: torch.Tensor,
    segments: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update: ``(new w (..., N), new moments (..., 4, N))`` (see the module docstring).

    Args:
        theta: ``(..., D)``; w, g: ``(..., N)``; moments: ``(..., 4, N)``;
        step, horizon: ``(...)`` (updates applied so far, the run's horizon);
        segments: the lengths of the parameter tensors in the flat layout (sum N).

    Pure, differentiable in everything, vmap-safe. The MLP is matrix products over the stacked
    features.
    """
    chunks = w.split(segments, -1)
    norms = [torch.linalg.vector_norm(c, dim=-1, keepdim=True) for c in chunks]
    w_normalised = torch.cat(
        [
            c * torch.rsqrt(n * n / c.shape[-1] + RMS_EPS)
            for c, n in zip(chunks, norms, strict=True)
        ],
        -1,
    )
    coeffs = coefficients(spec, theta, step, horizon)
    features, new_moments = _moments_and_features(spec, g, moments, coeffs, w_normalised)
    _, w1, _, _, *rest = unpack(spec, theta)
    x = torch.stack(features, -2)  # (..., F, N)
    h = torch.relu(w1 @ x + coeffs[..., C_SCALE + 1 :, None])  # (..., H, N)
    if spec.layers == 2:
        h = torch.relu(rest[0] @ h + rest[1].unsqueeze(-1))
    d = (rest[-1].unsqueeze(-2) @ h).squeeze(-2)
    return w - coeffs[..., C_SCALE, None] * (features[0] + d), new_moments


def sqrt_zero_grad(v: torch.Tensor) -> torch.Tensor:
    """``sqrt(v)`` (v >= 0), with gradient 0 instead of ``inf`` where ``v = 0`` under autograd.

    ``v = 0`` where a weight's gradient has been exactly 0 all run (an input pixel that is 0 in
    every image, a dead ReLU unit); there ``d sqrt(v) / dv = inf`` times ``dv / dg = 0`` made
    the rp gradient NaN. That gradient is 0 whatever the weights, so 0 is the exact
    contribution. Without autograd: plain ``torch.sqrt`` (the same values either way)."""
    if not v.requires_grad:
        return torch.sqrt(v)
    positive = v > 0
    return torch.where(positive, v, 1.0).sqrt() * positive


def inverse_rms(
    norms: torch.Tensor, lengths: torch.Tensor, repeats: torch.Tensor, n: int
) -> torch.Tensor:
    """``(..., N)``: each element's ``1 / RMS`` of its tensor, from the tensors' L2 ``norms
    (..., T)``, their ``lengths (T,)`` (float) and ``repeats`` (the same, int64), N = their
    sum (the arithmetic of :func:`update_eager`)."""
    inverse = torch.rsqrt(norms * norms / lengths + RMS_EPS)
    return torch.repeat_interleave(inverse, repeats, dim=-1, output_size=n)


def fused_update_indexed(
    spec: KernelSpec,
    theta: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    moments: torch.Tensor,
    step: torch.Tensor,
    horizon: torch.Tensor,
    norms: torch.Tensor,
    lengths: torch.Tensor,
    segment_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fused_update` with the weights' per-tensor RMS from their L2 ``norms (..., T)``
    (one foreach call outside), ``lengths (T,)`` and ``segment_index (N,)`` (the tensor of
    each element), gathered in the loop (slower than :func:`fused_update` with the inverse RMS
    gathered outside, which both entrances use)."""
    inverse = torch.rsqrt(norms * norms / lengths + RMS_EPS)
    return fused_update(spec, theta, w, g, moments, step, horizon, inverse[..., segment_index])


def fused_update(
    spec: KernelSpec,
    theta: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    moments: torch.Tensor,
    step: torch.Tensor,
    horizon: torch.Tensor,
    w_inverse_rms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`update_eager` written elementwise (what inductor fuses into one loop).
    ``w_inverse_rms (..., N)``: each weight's 1 / RMS of its tensor (:func:`inverse_rms`,
    computed outside: the batched form), so the compiled code knows nothing of the
    architecture (a segmented reduction inside the loop, an index_add, cost more than the
    whole MLP)."""
    coeffs = coefficients(spec, theta, step, horizon)
    features, new_moments = _moments_and_features(spec, g, moments, coeffs, w * w_inverse_rms)
    _, w1, _, _, *rest = unpack(spec, theta)

    def weight(block: torch.Tensor, *index: int) -> torch.Tensor:
        return block[(..., *index)].unsqueeze(-1)  # (..., 1): one weight per problem

    h = []
    for k in range(spec.hidden):
        pre = coeffs[..., C_SCALE + 1 + k, None]
        for j in range(NUM_FEATURES):
            pre = pre + weight(w1, k, j) * features[j]
        h.append(torch.relu(pre))
    if spec.layers == 2:
        w2, b2 = rest[0], rest[1]
        h = [
            torch.relu(weight(b2, k) + sum(weight(w2, k, j) * h[j] for j in range(spec.hidden)))
            for k in range(spec.hidden)
        ]
    d = sum(weight(rest[-1], k) * h[k] for k in range(spec.hidden))
    return w - coeffs[..., C_SCALE, None] * (features[0] + d), new_moments


# -- the compile cache -----------------------------------------------------------------------------
_COMPILED: dict[tuple[Any, ...], Callable[..., Any] | None] = {}

#: the sizes the update is traced with: any size other than 0 and 1 (which symbolic tracing
#: specialises), distinct, so that the compiled code keeps every batch and parameter count free
_TRACE_BATCH, _TRACE_NUMEL, _TRACE_TENSORS = 3, 37, 5


def compile_enabled() -> bool:
    """False when the environment switches the fused path off (``LOPT_NOMINAL_COMPILE=0``)."""
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _key(spec: KernelSpec, args: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    like, step = args[1], args[4]
    return (spec, like.dtype, like.device.type, like.dim(), len(args), step.dtype)


def _trace_inputs(args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Inputs like ``args`` (dtypes, device, ranks) with generic sizes, to trace with: B = 3
    problems where ``w`` is ``(B, N)``, N = 37 parameters in T = 5 tensors."""
    theta, w, _, _, step = args[:5]
    lead = (_TRACE_BATCH,) if w.dim() == 2 else ()
    n = _TRACE_NUMEL

    def like(tensor: torch.Tensor, *shape: int) -> torch.Tensor:
        return torch.rand((*lead, *shape), device=tensor.device).to(tensor.dtype) + 1

    inputs = [like(theta, theta.shape[-1]), like(w, n), like(w, n), like(w, NUM_MOMENTS, n)]
    inputs += [like(step).round(), like(step).round() * 10]
    if len(args) == 7:
        return [*inputs, like(w, n)]
    lengths = torch.tensor([7.0, 9.0, 6.0, 8.0, 7.0], device=w.device).to(args[7].dtype)
    index = torch.repeat_interleave(torch.arange(_TRACE_TENSORS, device=w.device), lengths.long())
    return [*inputs, like(w, _TRACE_TENSORS), lengths, index]


def _compile(spec: KernelSpec, args: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
    """Inductor's code for :func:`fused_update` (7 tensors) or :func:`fused_update_indexed` (9)
    of tensors like ``args``, every size but theta's ``D`` and the moments' 4 symbolic.

    The update is traced to an FX graph (``make_fx``, symbolic sizes, no duck sizing: equal
    sizes stay distinct symbols) and compiled by ``torch._inductor.standalone_compile``. The
    result is called without dynamo: no guards are evaluated per call (``torch.compile``'s
    guards and wrappers cost more than the loop itself on a 5,000-parameter model); the
    compiled code asserts its inputs' sizes and strides instead (contiguous tensors; the
    callers make them so).
    """
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    function = fused_update if len(args) == 7 else fused_update_indexed

    def update(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return function(spec, *tensors)

    inputs = _trace_inputs(args)
    with torch.no_grad(), fx_config.patch(use_duck_shape=False):
        graph = make_fx(update, tracing_mode="symbolic")(*inputs)
        return torch._inductor.standalone_compile(graph, inputs, dynamic_shapes="from_graph")


def compiled_update(spec: KernelSpec, args: tuple[torch.Tensor, ...]) -> Callable[..., Any] | None:
    """The compiled :func:`fused_update` (7 tensors) or :func:`fused_update_indexed` (9) for
    ``spec`` and tensors like ``args`` (dtypes, device type, rank), built once per process and
    valid for every size; None where compiling failed before. Raises what the compiler raises
    (:func:`run_fused` catches it)."""
    key = _key(spec, args)
    if key not in _COMPILED:
        _COMPILED[key] = _compile(spec, args)
    return _COMPILED[key]


def run_fused(spec: KernelSpec, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The compiled update of ``args`` (as :func:`fused_update`'s after ``spec``; contiguous),
    or None if it cannot be compiled here (then it warns once, and later calls return None at
    once)."""
    key = _key(spec, args)
    try:
        compiled = compiled_update(spec, args)
        if compiled is None:
            return None
        return compiled(*args)
    except Exception as exc:  # inductor raises many kinds (no compiler, lowering errors)
        _COMPILED[key] = None
        warnings.warn(
            f"nominal_mlp: torch.compile failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); using the eager update",
            stacklevel=3,
        )
        return None
