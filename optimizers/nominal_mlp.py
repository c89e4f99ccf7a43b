"""``nominal_mlp``: a per-parameter MLP plus a nominal Adam term and a learned schedule.

A learner family (:class:`optimizers.base.Learner`, ``learner=nominal_mlp``) made for
meta-training on families of tiny tasks run many at once (issue 24): Celo2's recipe (Moudgil
et al. 2026: a small per-parameter MLP over unit-free features) on top of a nominal Adam
descent term (Harrison et al. 2022), cheap enough per parameter that a fused step costs about
an Adam step. The update (:mod:`optimizers.nominal_kernel` has it line by line)::

    w <- w - lr0 * exp(a . phi_t) * (u + d),    d = MLP(x; theta)

with ``u`` Adam's direction, ``phi_t`` tanh features of the fraction of the run done
(``step / horizon``) and ``x`` five features per parameter: ``u``, the gradient and two more
momenta (timescales ``decays``, default 0.5 and 0.99) each over Adam's root second moment, and
the weight over its tensor's RMS; the time features enter the MLP's first bias. The MLP has
``layers`` (1 or 2) hidden ReLU layers of ``hidden`` (default 8) units and one output.

At ``theta = init_theta(seed)`` it IS Adam at ``lr0``: ``a`` and the last layer ``W3`` start at
zero (the other weights ``N(0, 1/fan_in)``, biases zero), so ``exp(a . phi) = 1`` and ``d = 0``.

Scale (what exactly holds, with Adam's ``eps`` and the RMS floor negligible): the features are
unchanged when the gradients are multiplied by any ``c > 0`` (the loss rescaled) or the weights
of a tensor by any ``s > 0``; so the step ``w_new - w`` is the same, a unit-free direction times
``lr0 exp(a . phi)``. A task reparametrised as ``w' = s w`` (so ``g' = g / s``) gets exactly
``s`` times the step when ``lr0`` is ``s lr0`` (as Adam needs). One ``theta`` thus serves tasks
whose gradients and weights have any scale; only the base rate is in parameter units.

Settings (recorded in the checkpoint): ``lr0``, ``horizon`` (the run's steps, for the time
features of the single-problem ``apply``), ``hidden``, ``layers``, ``beta1``, ``beta2``,
``eps``, ``decays``, ``centres``. ``compile`` (not recorded: it does not change the numbers)
switches the fused path; the environment's ``LOPT_NOMINAL_COMPILE=0`` switches it off
everywhere. State: ``{"step": t, "moments": (4, N)}`` (``m``, ``m_fast``, ``m_slow``, ``v``).

Two entrances: :meth:`NominalMLP.apply` (one problem, tuples of tensors: the harness's
optimizer, the torch.optim class and meta-training) and :meth:`NominalMLP.batched_step` (B
problems of one architecture as ``(B, N)`` rows, one theta row each: the batched meta-training
engine). Both use
the compiled update without autograd, and the eager one with autograd or under vmap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import register_learner
from optimizers.base import OptState, Params
from optimizers.layout import param_layout, zero_state
from optimizers.nominal_kernel import (
    NUM_FEATURES,
    NUM_MOMENTS,
    RMS_EPS,
    KernelSpec,
    compile_enabled,
    inverse_rms,
    run_fused,
    unpack,
    update_eager,
)

MAX_HIDDEN = 32


@dataclass(frozen=True)
class NominalMLPSettings:
    """The settings of a ``nominal_mlp`` learner (see the module docstring)."""

    lr0: float = 1e-3
    horizon: int = 2000
    hidden: int = 8
    layers: int = 2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    decays: tuple[float, ...] = (0.5, 0.99)
    centres: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        def number(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def integer(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        decays = tuple(self.decays) if isinstance(self.decays, (list, tuple)) else ()
        centres = tuple(self.centres) if isinstance(self.centres, (list, tuple)) else None
        checks = {
            "lr0": (number(self.lr0) and self.lr0 > 0, "a number > 0"),
            "horizon": (integer(self.horizon) and self.horizon >= 1, "an integer >= 1"),
            "hidden": (
                integer(self.hidden) and 1 <= self.hidden <= MAX_HIDDEN,
                f"an integer from 1 to {MAX_HIDDEN}",
            ),
            "layers": (self.layers in (1, 2) and integer(self.layers), "1 or 2"),
            "beta1": (number(self.beta1) and 0 <= self.beta1 < 1, ">= 0 and < 1"),
            "beta2": (number(self.beta2) and 0 <= self.beta2 < 1, ">= 0 and < 1"),
            "eps": (number(self.eps) and self.eps > 0, "a number > 0"),
            "decays": (
                len(decays) == 2 and all(number(b) and 0 <= b < 1 for b in decays),
                "two momentum decays, each >= 0 and < 1",
            ),
            "centres": (
                centres is not None and all(number(c) for c in centres),
                "a list of numbers (fractions of the horizon)",
            ),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise UsageError(
                    f"nominal_mlp: {name} must be {allowed}, got {getattr(self, name)!r}"
                )
        object.__setattr__(self, "decays", tuple(float(b) for b in decays))
        object.__setattr__(self, "centres", tuple(float(c) for c in centres or ()))
        for name in ("lr0", "beta1", "beta2", "eps"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def spec(self) -> KernelSpec:
        """The kernel's static structure (everything but the horizon)."""
        return KernelSpec(
            lr0=self.lr0,
            hidden=self.hidden,
            layers=self.layers,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            decays=(self.decays[0], self.decays[1]),
            centres=self.centres,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decays"] = list(self.decays)
        data["centres"] = list(self.centres)
        return data


@register_learner("nominal_mlp")
class NominalMLP:
    """Adam at lr0 plus a per-parameter MLP and a learned schedule (fused by torch.compile).

    At its initial theta it is Adam; see the module docstring."""

    family: ClassVar[str] = "nominal_mlp"

    def __init__(self, compile: bool | None = None, **settings: Any) -> None:
        try:
            self.settings = NominalMLPSettings(**settings)
        except TypeError as exc:
            raise UsageError(f"nominal_mlp: {exc}") from exc
        if compile is not None and not isinstance(compile, bool):
            raise UsageError(f"nominal_mlp: compile must be true or false, got {compile!r}")
        #: use the compiled update where possible (None: unless LOPT_NOMINAL_COMPILE=0)
        self.compile = compile
        self.spec = self.settings.spec()
        self._horizon: dict[tuple[Any, ...], torch.Tensor] = {}
        self._segments: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- the Learner contract --------------------------------------------------------------------
    @property
    def num_theta(self) -> int:
        return sum(self.spec.sizes)

    def record(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def theta_blocks(self) -> dict[str, tuple[int, int]]:
        """Each named block of theta and its ``[start, stop)`` in the flat vector (``schedule``:
        the learned schedule's ``a``; ``W1``, ``Wt``, ``b1``, ``W2``, ``b2``, ``W3``: the MLP)."""
        out, start = {}, 0
        for name, size in zip(self.spec.names, self.spec.sizes, strict=True):
            out[name] = (start, start + size)
            start += size
        return out

    def init_theta(self, seed: int) -> torch.Tensor:
        """``a``, the biases and ``W3`` zero (the update is Adam's at ``lr0``); ``W1`` and
        ``Wt`` ``N(0, 1 / (F + S))`` (one fan-in over both), ``W2`` ``N(0, 1 / hidden)``."""
        generator = torch.Generator().manual_seed(seed)
        s = self.spec
        first_fan_in = NUM_FEATURES + s.num_time
        blocks = []
        for index, shape in enumerate(s.shapes):
            is_matrix = len(shape) == 2
            if is_matrix:
                fan_in = first_fan_in if index in (1, 2) else shape[1]
                blocks.append(torch.randn(shape, generator=generator) / math.sqrt(fan_in))
            else:
                blocks.append(torch.zeros(shape))
        return torch.cat([b.reshape(-1) for b in blocks])

    def init(self, params: Params) -> OptState:
        return zero_state(params, "moments", NUM_MOMENTS)

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, OptState]:
        """One update of one problem (pure; differentiable and vmap-safe on the eager path;
        ``reuse_buffers`` has no effect)."""
        del reuse_buffers
        layout = param_layout(params)
        step = state["step"]
        moments = state["moments"]
        ref = params[0]
        theta = theta.to(dtype=ref.dtype)
        if self._fused_allowed(theta, moments, *params, *grads):
            # flatten and unflatten in one C++ call each (no batching rule: not under vmap)
            w = torch._C._nn.flatten_dense_tensors(list(params))
            g = torch._C._nn.flatten_dense_tensors(list(grads))
            step_t = torch.as_tensor(step, dtype=w.dtype, device=w.device)
            horizon = self._horizon_tensor(w)
            lengths, index = self._segment_lengths(layout.lengths, w)
            # each weight's 1 / RMS of its tensor, gathered outside the loop (a gather inside
            # it is not vectorised: it cost more than this whole line)
            norms = torch.stack(torch._foreach_norm(list(params)))
            scale = torch.rsqrt(norms * norms / lengths + RMS_EPS).index_select(0, index)
            args = (theta.contiguous(), w, g, moments.contiguous(), step_t, horizon, scale)
            result = run_fused(self.spec, *args)
            if result is not None:
                new_params = tuple(torch._C._nn.unflatten_dense_tensors(result[0], list(params)))
                return new_params, {"step": step + 1, "moments": result[1]}
        w, g = layout.flatten(params), layout.flatten(grads)
        step_t = torch.as_tensor(step, dtype=w.dtype, device=w.device)
        horizon = self._horizon_tensor(w)
        new_w, new_moments = update_eager(
            self.spec, theta, w, g, moments, step_t, horizon, layout.lengths
        )
        return layout.unflatten(new_w), {"step": step + 1, "moments": new_moments}

    # -- the batched interface (the meta-training engine's) --------------------------------------
    def batched_init(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state of B problems whose flat parameters are the rows of ``w (B, N)``:
        ``{"moments": (B, 4, N)}`` zeros."""
        if w.dim() != 2:
            raise UsageError(
                f"nominal_mlp: batched_init needs w of shape (B, N), got {tuple(w.shape)}"
            )
        return {"moments": w.new_zeros(w.shape[0], NUM_MOMENTS, w.shape[1])}

    def batched_step(
        self,
        theta: torch.Tensor,
        w: torch.Tensor,
        g: torch.Tensor,
        state: dict[str, torch.Tensor],
        step: torch.Tensor,
        horizon: torch.Tensor,
        segments: tuple[int, ...],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One update of B problems of one architecture, each with its own theta row.

        Args:
            theta: ``(B, D)``, ``D = num_theta``.
            w, g: ``(B, N)`` flat parameters and gradients (rows in the layout of ``segments``).
            state: ``{"moments": (B, 4, N)}`` (:meth:`batched_init`).
            step: ``(B,)`` int64, the updates already applied to each problem.
            horizon: ``(B,)`` int64, each problem's inner horizon (the time features').
            segments: the lengths of the parameter tensors in a row (sum N), for the
                weights' per-tensor RMS.

        Returns ``(new w (B, N), {"moments": (B, 4, N)})``; pure (inputs untouched). Row ``b``
        equals :meth:`apply` of problem ``b`` with ``theta[b]`` and ``horizon[b]``.
        """
        moments = state["moments"]
        b, n = w.shape if w.dim() == 2 else (None, None)
        if (
            b is None
            or g.shape != w.shape
            or theta.shape != (b, self.num_theta)
            or moments.shape != (b, NUM_MOMENTS, n)
            or step.shape != (b,)
            or horizon.shape != (b,)
            or sum(segments) != n
        ):
            raise UsageError(
                f"nominal_mlp: batched_step needs theta (B, {self.num_theta}), w and g (B, N), "
                f"moments (B, {NUM_MOMENTS}, N), step and horizon (B,), sum(segments) = N; got "
                f"theta {tuple(theta.shape)}, w {tuple(w.shape)}, g {tuple(g.shape)}, moments "
                f"{tuple(moments.shape)}, step {tuple(step.shape)}, horizon "
                f"{tuple(horizon.shape)}, sum(segments) {sum(segments)}"
            )
        theta = theta.to(dtype=w.dtype)
        result = None
        if self._fused_allowed(theta, g, w, moments, step, horizon):
            lengths, _ = self._segment_lengths(tuple(segments), w)
            chunks = w.split(tuple(segments), -1)
            norms = torch.stack([torch.linalg.vector_norm(c, dim=-1) for c in chunks], -1)
            repeats = self._repeats(tuple(segments), w)
            scale = inverse_rms(norms, lengths, repeats, w.shape[-1])  # (B, N), outside
            args = (theta, w, g, moments, step, horizon, scale)
            result = run_fused(self.spec, *(a.contiguous() for a in args))
        if result is None:
            result = update_eager(self.spec, theta, w, g, moments, step, horizon, tuple(segments))
        new_w, new_moments = result
        return new_w, {"moments": new_moments}

    # -- schedules (for reports) -----------------------------------------------------------------
    def time_features(self, step: int, horizon: int | None = None) -> torch.Tensor:
        """``phi`` ``(S,)`` (float64) for the update after ``step`` updates of ``horizon``."""
        fraction = step / (horizon or self.settings.horizon)
        values = [math.tanh(10.0 * (fraction - c)) for c in self.settings.centres]
        return torch.tensor([*values, 1.0], dtype=torch.float64)

    def learning_rate(self, theta: torch.Tensor, step: int) -> float:
        """The learned schedule's rate ``lr0 * exp(a . phi)`` of update number ``step``
        (1-based), the learned term aside."""
        a = unpack(self.spec, theta.detach().cpu().double())[0]
        return self.settings.lr0 * math.exp(float(a @ self.time_features(step - 1)))

    # -- helpers ----------------------------------------------------------------------------------
    def _fused_allowed(self, theta: torch.Tensor, *tensors: torch.Tensor) -> bool:
        """The compiled path: switched on, no autograd, no vmap (functorch wrappers)."""
        enabled = compile_enabled() if self.compile is None else self.compile
        needs_grad = theta.requires_grad or any(t.requires_grad for t in tensors)
        if not enabled or (torch.is_grad_enabled() and needs_grad):
            return False
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        return not any(wrapped(t) for t in (theta, *tensors))

    def _horizon_tensor(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        found = self._horizon.get(key)
        if found is None:
            found = self._horizon[key] = torch.tensor(
                float(self.settings.horizon), dtype=like.dtype, device=like.device
            )
        return found

    def _segment_lengths(
        self, segments: tuple[int, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lengths (T,) in like's dtype, segment index (N,) int64)`` of a flat layout
        (cached)."""
        key = (segments, like.dtype, like.device)
        found = self._segments.get(key)
        if found is None:
            if not segments or min(segments) < 1:
                raise UsageError(f"nominal_mlp: segments must be positive lengths, got {segments}")
            repeats = torch.tensor(segments)
            index = torch.repeat_interleave(torch.arange(len(segments)), repeats)
            found = (repeats.to(device=like.device, dtype=like.dtype), index.to(like.device))
            if len(self._segments) > 16:
                self._segments.clear()
            self._segments[key] = found
        return found

    def _repeats(self, segments: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The segment lengths as an int64 tensor on like's device (cached)."""
        key = ("repeats", segments, like.device)
        found = self._segments.get(key)
        if found is None:
            found = (torch.tensor(segments, device=like.device),) * 2
            self._segments[key] = found
        return found[0]
