"""``metz_mlp``: the learned optimizer of Metz et al. (ICML 2019), one small MLP per parameter.

For each scalar parameter the network sees (``docs/meta-training.md`` has the derivation of every
choice; the method is Metz et al., arXiv 1810.10180):

* the gradient ``g`` and the parameter value ``w``;
* six momentum accumulators ``m_k = b_k m_k + (1 - b_k) g``, ``b`` in
  ``{0.1, 0.5, 0.9, 0.99, 0.999, 0.9999}`` (zero-initialised, no bias correction, updated with
  the current gradient before use);
* optionally (``second_moments=True``) six second moments ``v_k = b_k v_k + (1 - b_k) g^2`` and
  ``m_k / sqrt(v_k + 1e-8)``;

each normalised per tensor by its root mean square, ``x / sqrt(mean(x^2) + 1e-5)``; then eleven
time features ``tanh(t / tau - 1)``, ``tau`` in ``{1, 3, ..., 100000}``, the same for every
parameter (``t`` = updates applied so far in this inner run). The MLP (default 19 -> 32 -> 32 ->
2, ReLU) outputs a direction ``d`` and a magnitude ``s``; the update is
``w <- w - 0.001 * d * exp(0.001 * s)``.

This module is the learner family (:class:`optimizers.base.Learner`): the architecture
(:class:`MetzMLPArchitecture`), the flat meta-parameters ``theta`` (:func:`init_theta`,
:func:`unpack_theta`), the update as a function of ``theta`` (:func:`metz_mlp_update`) and the
learner :class:`MetzMLP` (``learner=metz_mlp``, old name ``mlp``). With ``theta`` fixed it is an
ordinary optimizer: :func:`optimizers.learned.opt_fn` (the optimizer plugin ``learned``, old name
``lopt``, serves it from a checkpoint) and, for torch training loops,
:class:`optimizers.torch_optim.TorchLearnedOptimizer`. Meta-training calls the very same
:meth:`MetzMLP.apply` with a ``theta`` that requires gradients.

How it is computed (the per-step cost matters: the learned optimizer is timed like any other):
all parameters are concatenated into one flat vector, the features are a ``(F, N)`` matrix (one
contiguous row per feature, ``N`` parameters), the per-tensor RMS is one reduction per tensor
over all features at once, the time features are folded into the first layer's bias (they are
the same for every parameter), and the MLP is three matrix products over all ``N`` rows.
Everything is differentiable (in ``theta``, in the gradients and in the parameters) and works
under ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import learner_alias, register_learner
from optimizers.base import OptState, Params
from optimizers.layout import ParamLayout, param_layout, zero_state

DECAYS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
#: ``theta`` of an untrained learned optimizer (``optimizer.checkpoint`` left empty) uses this seed.
UNTRAINED_SEED = 0


# -- architecture ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetzMLPArchitecture:
    """Everything that fixes the shape and the arithmetic of the learned optimizer.

    Attributes:
        hidden_sizes: widths of the hidden ReLU layers (the paper: ``(32, 32)``).
        second_moments: add the second moments ``v_k`` and ``m_k / sqrt(v_k + moment_eps)``
            (the 2019 code's larger feature set): ``2 + 3 * len(decays)`` per-parameter features.
        decays: the accumulators' decays ``b_k``.
        time_scales: the ``tau`` of the time features ``tanh(t / tau - 1)``.
        step_mult, exp_mult: the update is ``w - step_mult * d * exp(exp_mult * s)``.
        rms_eps: the per-tensor normalisation is ``x / sqrt(mean(x^2) + rms_eps)``.
        moment_eps: added to ``v_k`` under the square root of ``m_k / sqrt(v_k + moment_eps)``.
    """

    hidden_sizes: tuple[int, ...] = (32, 32)
    second_moments: bool = False
    decays: tuple[float, ...] = DECAYS
    time_scales: tuple[float, ...] = TIME_SCALES
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    rms_eps: float = 1e-5
    moment_eps: float = 1e-8

    def __post_init__(self) -> None:
        sizes = tuple(self.hidden_sizes)
        if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise UsageError(f"hidden_sizes must be positive integers, got {list(sizes)}")
        if not self.decays or any(not 0.0 <= b < 1.0 for b in self.decays):
            raise UsageError(f"decays must be in [0, 1), got {list(self.decays)}")
        if not self.time_scales or any(not tau > 0 for tau in self.time_scales):
            raise UsageError(f"time_scales must be > 0, got {list(self.time_scales)}")
        for name in ("step_mult", "exp_mult", "rms_eps", "moment_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in sizes))
        object.__setattr__(self, "decays", tuple(float(b) for b in self.decays))
        object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))

    @property
    def num_accumulators(self) -> int:
        """Rows of the per-parameter state: the ``m_k``, then the ``v_k`` if any."""
        return len(self.decays) * (2 if self.second_moments else 1)

    @property
    def num_param_features(self) -> int:
        """Per-parameter input columns (normalised per tensor): 8 in the default set."""
        return 2 + len(self.decays) * (3 if self.second_moments else 1)

    @property
    def num_inputs(self) -> int:
        """All inputs of the MLP: 19 in the default set."""
        return self.num_param_features + len(self.time_scales)

    @property
    def theta_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the blocks of ``theta``, in order: the first layer's weight on the
        per-parameter features ``(h1, F)``, its weight on the time features ``(h1, 11)``, its
        bias, then ``(weight (out, in), bias)`` of every later layer; the last has out = 2."""
        h = self.hidden_sizes
        shapes: list[tuple[int, ...]] = [
            (h[0], self.num_param_features),
            (h[0], len(self.time_scales)),
            (h[0],),
        ]
        for fan_in, fan_out in zip(h, (*h[1:], 2), strict=True):
            shapes += [(fan_out, fan_in), (fan_out,)]
        return tuple(shapes)

    @property
    def num_theta(self) -> int:
        """The number of meta-parameters (1,762 for the default architecture)."""
        return sum(math.prod(s) for s in self.theta_shapes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, bools) for checkpoints and configs."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetzMLPArchitecture:
        """The inverse of :meth:`to_dict`; unknown or ill-typed entries raise ``UsageError``."""
        if not isinstance(data, dict):
            raise UsageError(f"an architecture must be a mapping, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown architecture field {unknown[0]!r}")
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise UsageError(f"invalid architecture: {exc}") from exc


def init_theta(architecture: MetzMLPArchitecture, seed: int = UNTRAINED_SEED) -> torch.Tensor:
    """Fresh meta-parameters (float32, CPU): weights ~ N(0, 1/fan_in), biases zero.

    (The initialisation of learned_optimization's MLPLOpt, without the truncation.)
    """
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    shapes = architecture.theta_shapes
    first_fan_in = architecture.num_inputs  # the two first-layer blocks share one fan-in
    for index, shape in enumerate(shapes):
        if len(shape) == 1:
            blocks.append(torch.zeros(shape))
            continue
        fan_in = first_fan_in if index < 2 else shape[1]
        blocks.append(torch.randn(shape, generator=generator) / math.sqrt(fan_in))
    return torch.cat([b.reshape(-1) for b in blocks])


def unpack_theta(architecture: MetzMLPArchitecture, theta: torch.Tensor) -> list[torch.Tensor]:
    """Views of ``theta`` with the shapes of :attr:`MetzMLPArchitecture.theta_shapes`.

    ``theta`` may carry leading batch dimensions only under ``torch.func.vmap``.
    """
    if theta.shape[-1:] != (architecture.num_theta,):
        raise UsageError(
            f"theta has {theta.shape[-1] if theta.dim() else 0} values; the architecture "
            f"needs {architecture.num_theta}"
        )
    sizes = [math.prod(s) for s in architecture.theta_shapes]
    return [
        block.view(shape)
        for block, shape in zip(theta.split(sizes), architecture.theta_shapes, strict=True)
    ]


_CONSTANTS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(
    architecture: MetzMLPArchitecture, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decays (D, 1), time scales (S,))`` on ``device``."""
    key = (architecture.decays, architecture.time_scales, device, dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        decays = torch.tensor(architecture.decays, dtype=dtype, device=device).reshape(-1, 1)
        scales = torch.tensor(architecture.time_scales, dtype=dtype, device=device)
        found = _CONSTANTS[key] = (decays, scales)
    return found


# -- the update ------------------------------------------------------------------------------------
def time_features(
    architecture: MetzMLPArchitecture, step: int | torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """``tanh(t / tau - 1)`` for every ``tau``: shape ``(S,)`` (``step`` may be a 0-d tensor)."""
    _, scales = _constants(architecture, like.device, like.dtype)
    if not isinstance(step, torch.Tensor):
        step = torch.tensor(float(step), dtype=like.dtype, device=like.device)
    return torch.tanh(step.to(like.dtype) / scales - 1.0)


def metz_mlp_update(
    architecture: MetzMLPArchitecture,
    weights: Sequence[torch.Tensor],
    layout: ParamLayout,
    grad: torch.Tensor,
    param: torch.Tensor,
    accumulators: torch.Tensor,
    step: int | torch.Tensor,
    workspace: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One learned-optimizer update of flat parameters: the whole method in one function.

    Args:
        weights: :func:`unpack_theta` of ``theta``.
        grad, param: ``(N,)`` flat gradient and parameters (:meth:`ParamLayout.flatten`).
        accumulators: ``(A, N)``: the ``m_k`` rows, then the ``v_k`` rows (second moments).
        step: the number of updates applied so far in this inner run (the time features' ``t``).
        workspace: only without autograd and outside vmap: a dict in which the large
            intermediates (features, activations) are kept and reused from call to call. The
            arithmetic is the same; it saves allocating about 6 MB per call for
            mnist5k_cnn16 (filling a freshly allocated activation with the bias took about
            1 ms after a training step, 0.13 ms in a reused buffer: torch.profiler).

    Returns ``(new_param (N,), new_accumulators (A, N))``, new tensors; the inputs are untouched.
    Differentiable in everything; also correct under ``torch.func.vmap``.
    """
    if workspace is not None and torch.is_grad_enabled():
        raise ValueError("a workspace is for updates without autograd (under torch.no_grad)")
    arch = architecture
    decays, _ = _constants(arch, grad.device, grad.dtype)
    num_decays = len(arch.decays)
    g = grad.unsqueeze(0)
    # m_k <- b_k m_k + (1 - b_k) g  ==  lerp(g, m_k, b_k)
    momentum = torch.lerp(g, accumulators[:num_decays], decays)
    rows = [g, param.unsqueeze(0), momentum]
    if arch.second_moments:
        second = torch.lerp(g * g, accumulators[num_decays:], decays)
        rows += [second, momentum * torch.rsqrt(second + arch.moment_eps)]
        new_accumulators = torch.cat([momentum, second])
    else:
        new_accumulators = momentum
    count = sum(r.shape[0] for r in rows)
    size = grad.shape[-1]
    if workspace is None:
        features = torch.cat(rows)  # (F, N)
    else:
        features = torch.cat(rows, out=_buffer(workspace, "features", (count, size), grad))
    # per-tensor RMS of every feature row: one reduction and one scaling per tensor, all rows
    # at once (cheaper, forward and backward, than a gather of the scales over all N columns)
    chunks = features.split(layout.lengths, -1)
    scales = [torch.rsqrt((c * c).mean(dim=-1, keepdim=True) + arch.rms_eps) for c in chunks]
    if workspace is None:
        normalised = torch.cat([c * k for c, k in zip(chunks, scales, strict=True)], dim=-1)
    else:
        normalised = _buffer(workspace, "normalised", (count, size), grad)
        for c, k, target in zip(chunks, scales, normalised.split(layout.lengths, -1), strict=True):
            torch.mul(c, k, out=target)

    first_param_weight, first_time_weight, first_bias = weights[0], weights[1], weights[2]
    bias = torch.addmv(first_bias, first_time_weight, time_features(arch, step, grad))
    # feature-major (h, N) activations: the fastest layout forward and backward on CPUs
    layers = [(first_param_weight, bias), *zip(weights[3::2], weights[4::2], strict=True)]
    hidden = normalised
    for index, (weight, layer_bias) in enumerate(layers):
        if workspace is None:
            hidden = torch.addmm(layer_bias.unsqueeze(-1), weight, hidden)
        else:
            target = _buffer(workspace, f"layer{index}", (weight.shape[0], size), grad)
            hidden = torch.addmm(layer_bias.unsqueeze(-1), weight, hidden, out=target)
        if index < len(layers) - 1:
            hidden = hidden.relu_()
    out = hidden  # (2, N): the output layer is a wide (2, h) @ (h, N) product
    direction, magnitude = out[0], out[1]
    new_param = param - arch.step_mult * direction * torch.exp(arch.exp_mult * magnitude)
    return new_param, new_accumulators


def _buffer(
    workspace: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """The workspace's buffer ``name`` with this shape, dtype and device (made if needed)."""
    buffer = workspace.get(name)
    if (
        buffer is None
        or buffer.shape != shape
        or buffer.dtype != like.dtype
        or buffer.device != like.device
    ):
        buffer = workspace[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buffer


def wire_feature(
    theta: torch.Tensor,
    architecture: MetzMLPArchitecture,
    column: int,
    *,
    magnitude_bias: float = 0.0,
    silence_rest: bool = False,
) -> torch.Tensor:
    """A copy of ``theta`` with a path from input ``column`` (a normalised feature ``x``) to the
    direction output: ``d = x + (the rest of the network)``.

    Hidden units 0 and 1 of the first layer read ``+x`` and ``-x`` and nothing else; units 0 and
    1 of the second layer copy them; the direction output gets ``+1`` and ``-1`` from those
    (``relu(x) - relu(-x) = x``). ``magnitude_bias`` is the magnitude output's bias (the update
    is ``step_mult * d * exp(exp_mult * bias)``). With ``silence_rest`` the outputs read no other
    unit, so ``d = x`` exactly; the other hidden units stay as they were (random), so the
    gradients of the last layer are not zero and meta-training can move away from the wiring.
    """
    if len(architecture.hidden_sizes) != 2 or min(architecture.hidden_sizes) < 2:
        raise UsageError("wiring a feature needs two hidden layers of >= 2 units")
    out = theta.detach().clone()
    first_w, first_time_w, first_b, second_w, second_b, last_w, last_b = unpack_theta(
        architecture, out
    )
    for block in (first_w, first_time_w, first_b, second_w, second_b):
        block[0:2] = 0.0
    first_w[0, column], first_w[1, column] = 1.0, -1.0
    second_w[0, 0], second_w[1, 1] = 1.0, 1.0
    if silence_rest:
        last_w.zero_()
        last_b.zero_()
    last_w[0, 0], last_w[0, 1] = 1.0, -1.0
    last_b[1] = magnitude_bias
    return out


def momentum_start(theta: torch.Tensor, architecture: MetzMLPArchitecture) -> torch.Tensor:
    """``theta`` (a random MLP) whose update is ``step_mult * m_0.9 / rms(m_0.9)`` exactly:
    SGD with momentum on per-tensor normalised steps (:func:`wire_feature`, the momentum of
    decay 0.9, the rest silenced)."""
    if 0.9 not in architecture.decays:
        raise UsageError("the momentum start needs the decay 0.9 among the accumulators")
    column = 2 + architecture.decays.index(0.9)  # after the gradient and the parameter
    return wire_feature(theta, architecture, column, silence_rest=True)


# -- the learner family (what meta-training trains) ------------------------------------------------
@register_learner("metz_mlp")
class MetzMLP:
    """The paper's learned optimizer (Metz et al. 2019): one small MLP applied to every parameter.

    The learner family ``learner=metz_mlp``; the old name ``learner=mlp`` is :data:`MLPLearner`
    (the same class, which checkpoints record as ``mlp``).

    Settings: the fields of :class:`MetzMLPArchitecture` (``hidden_sizes``, ``second_moments``,
    ...) and ``start``, how :meth:`init_theta` starts: ``random`` (the paper's random MLP,
    whose steps drive a conv net to the loss clip within about a hundred steps) or
    ``momentum`` (:func:`momentum_start`: the same random MLP with a path wired in so that the
    update is ``0.001 * m_0.9 / rms(m_0.9)``, normalised momentum SGD, which does not
    diverge). State: ``{"step": t, "accumulators": (A, N)}``. The contract is
    :class:`optimizers.base.Learner`.
    """

    family: ClassVar[str] = "metz_mlp"
    STARTS: ClassVar[tuple[str, ...]] = ("random", "momentum")

    def __init__(self, start: str = "random", **settings: Any) -> None:
        if start not in self.STARTS:
            raise UsageError(
                f"{self.family}: start must be one of {', '.join(self.STARTS)}; got {start!r}"
            )
        if start == "momentum" and (
            len(settings.get("hidden_sizes", (32, 32))) != 2
            or min(settings.get("hidden_sizes", (32, 32))) < 2
        ):
            raise UsageError(f"{self.family}: start=momentum needs two hidden layers of >= 2 units")
        self.start = start
        self.architecture = MetzMLPArchitecture.from_dict(dict(settings))
        self._workspace: dict[str, torch.Tensor] = {}

    @classmethod
    def of(cls, architecture: MetzMLPArchitecture | None = None) -> MetzMLP:
        """The learner of ``architecture`` (default: the paper's)."""
        return cls(**(architecture or MetzMLPArchitecture()).to_dict())

    @property
    def num_theta(self) -> int:
        return self.architecture.num_theta

    def init_theta(self, seed: int) -> torch.Tensor:
        theta = init_theta(self.architecture, seed)
        return momentum_start(theta, self.architecture) if self.start == "momentum" else theta

    def record(self) -> dict[str, Any]:
        record = self.architecture.to_dict()
        if self.start != "random":  # the paper's start needs no entry (older checkpoints)
            record["start"] = self.start
        return record

    def init(self, params: Params) -> OptState:
        return zero_state(params, "accumulators", self.architecture.num_accumulators)

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, OptState]:
        """One update with the meta-parameters ``theta`` (see :func:`metz_mlp_update`)."""
        layout = param_layout(params)
        new_flat, accumulators = metz_mlp_update(
            self.architecture,
            unpack_theta(self.architecture, theta),
            layout,
            layout.flatten(grads),
            layout.flatten(params),
            state["accumulators"],
            state["step"],
            self._workspace if reuse_buffers else None,
        )
        return layout.unflatten(new_flat), {"step": state["step"] + 1, "accumulators": accumulators}


#: the old name of the family (``learner=mlp``): the same learner, recorded as ``mlp``
MLPLearner = learner_alias("mlp", MetzMLP)
#: old names, kept working
LOptArchitecture = MetzMLPArchitecture
lopt_update = metz_mlp_update
