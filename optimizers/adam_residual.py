"""``adam_residual``: Adam plus a learned schedule and a learned per-parameter correction.

A learner family (:class:`optimizers.base.Learner`, ``learner=adam_residual``) whose
update is the strong hand-designed step plus learned terms, initialised so that at
``theta = init_theta(seed)`` it IS Adam at the base learning rate ``lr0`` (the design of
Celo, Moudgil et al. 2025, and of the nominal terms of Harrison et al. 2022)::

    m, v  <- Adam's moments (beta1, beta2), bias-corrected: u = m_hat / (sqrt(v_hat) + eps)
    phi_t  = [tanh(10 (t / T - c)) for c in centres] + [1]       (T: the run's step budget)
    x      = [u, g, m_hat, w] per parameter, each normalised by its RMS over the tensor
    f(x)   = W2 relu(W1 x + Wt phi_t + b1)                          (a small per-parameter MLP)
    d      = f(x) - f(-x)                                           (odd in x)
    w     <- w - lr0 * exp(a . phi_t) * (u + d + wd0 * exp(c . phi_t) * w)

``a`` (the learned schedule: a log-learning-rate multiplier as a function of the fraction of the
run done) and the last layer ``W2`` start at zero, so ``exp(a . phi) = 1`` and ``d = 0``: the
update is exactly Adam's (a test checks 100 steps against ``adam`` to 1e-6); with a base weight
decay ``wd0 > 0`` it is exactly AdamW's (``torch.optim.AdamW(lr=lr0, weight_decay=wd0)``), and
theta gains ``c``, the learned log-multiplier of the decay (a decoupled weight-decay schedule,
zero at the start). The hidden layer
starts random (``N(0, 1/fan_in)``), so the gradient with respect to ``W2`` is not zero. The
correction is odd in the features (flipping the signs of the gradient, the moments and the
weight flips it), so it can never add the same drift to every weight: a first version with a
free output bias learned one (-0.02 after 75 outer steps), which truncations of 50 steps
rewarded and whole 2,000-step runs paid for (held-out training loss 4e-6 -> 2e-3).

Settings (recorded in the checkpoint): ``lr0`` (the tuned Adam learning rate of the task),
``horizon`` (T), ``hidden`` (width of the MLP; 0: no correction, theta is the schedule ``a``
alone, ``len(centres) + 1`` values), ``wd0`` (AdamW's decoupled weight decay at the start; 0:
none, and no ``c``), ``beta1``, ``beta2``, ``eps``, ``centres``, and the start of ``a``
(``start_warmup``, ``start_final_fraction``: by default zero; else fitted to a warm-up and
cosine decay, to start meta-training from a tuned schedule, see ``start_schedule``).
State: ``{"step": t, "moments": (2, N)}`` (m and v over the flat parameters).

Cost: Adam's arithmetic on one flat vector plus a 4 -> ``hidden`` -> 1 MLP per parameter
(40 multiply-adds per parameter at ``hidden=8``, against about 1,300 for the paper's MLP).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import register_learner
from optimizers.adam import cosine_factor
from optimizers.base import OptState, Params
from optimizers.layout import param_layout, zero_state

NUM_FEATURES = 4  # u, g, m_hat, w
RMS_EPS = 1e-12


@dataclass(frozen=True)
class AdamResidualSettings:
    """The settings of an ``adam_residual`` learner (see the module docstring)."""

    lr0: float = 1e-3
    horizon: int = 2000
    hidden: int = 8
    wd0: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    centres: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    start_warmup: int = 0
    start_final_fraction: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "lr0": isinstance(self.lr0, (int, float)) and math.isfinite(self.lr0) and self.lr0 > 0,
            "horizon": isinstance(self.horizon, int) and self.horizon >= 1,
            "hidden": isinstance(self.hidden, int) and self.hidden >= 0,
            "wd0": isinstance(self.wd0, (int, float)) and math.isfinite(self.wd0) and self.wd0 >= 0,
            "beta1": 0 <= self.beta1 < 1,
            "beta2": 0 <= self.beta2 < 1,
            "eps": self.eps > 0,
            "start_warmup": isinstance(self.start_warmup, int)
            and 0 <= self.start_warmup < self.horizon,
            "start_final_fraction": 0 < self.start_final_fraction <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise UsageError(f"adam_residual: invalid {name} {getattr(self, name)!r}")
        object.__setattr__(self, "centres", tuple(float(c) for c in self.centres))
        object.__setattr__(self, "lr0", float(self.lr0))
        object.__setattr__(self, "wd0", float(self.wd0))
        object.__setattr__(self, "start_final_fraction", float(self.start_final_fraction))

    @property
    def num_time(self) -> int:
        """Time features: one per centre, plus the constant."""
        return len(self.centres) + 1

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """theta's blocks: ``a (S,)``, ``W1 (H, F)``, ``Wt (H, S)``, ``b1 (H,)``, ``W2 (1, H)``,
        and ``c (S,)`` when ``wd0 > 0``."""
        h, s = self.hidden, self.num_time
        decay = ((s,),) if self.wd0 > 0 else ()
        return ((s,), (h, NUM_FEATURES), (h, s), (h,), (1, h), *decay)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["centres"] = list(self.centres)
        return data


@register_learner("adam_residual")
class AdamResidual:
    """Adam with a learned schedule and a learned per-parameter correction (starts at Adam)."""

    family: ClassVar[str] = "adam_residual"

    def __init__(self, **settings: Any) -> None:
        if "centres" in settings:
            settings["centres"] = tuple(settings["centres"])
        try:
            self.settings = AdamResidualSettings(**settings)
        except TypeError as exc:
            raise UsageError(f"adam_residual: {exc}") from exc
        self._sizes = [math.prod(shape) for shape in self.settings.shapes]

    @property
    def num_theta(self) -> int:
        return sum(self._sizes)

    def record(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def init_theta(self, seed: int) -> torch.Tensor:
        """Zero last layer and zero decay schedule; the hidden layer random; the schedule ``a``
        zero (the update is Adam's, or AdamW's) unless a start schedule is set
        (:meth:`start_schedule`)."""
        generator = torch.Generator().manual_seed(seed)
        blocks = []
        for index, shape in enumerate(self.settings.shapes):
            if index in (1, 2):  # W1, Wt: N(0, 1/fan_in) over both inputs
                fan_in = NUM_FEATURES + self.settings.num_time
                blocks.append(torch.randn(shape, generator=generator) / math.sqrt(fan_in))
            elif index == 0:
                blocks.append(self.start_schedule())
            else:
                blocks.append(torch.zeros(shape))
        return torch.cat([b.reshape(-1) for b in blocks])

    def start_schedule(self) -> torch.Tensor:
        """``a`` at the start: zero (a constant rate ``lr0``) by default; with ``start_warmup``
        or ``start_final_fraction < 1``, the least-squares fit over the horizon's steps of
        ``log f(t)``, ``f`` the warm-up and cosine decay of ``adam_cosine`` (decay over the
        horizon, to ``start_final_fraction``), so that meta-training starts from a tuned
        ``adam_cosine``/``adamw_cosine`` (the fit is within about 12% of ``f`` for a floor of
        0.08 without warm-up; warm-ups shorter than ``horizon / 10`` are smoothed over)."""
        s = self.settings
        if s.start_warmup == 0 and s.start_final_fraction == 1.0:
            return torch.zeros(s.num_time)
        steps = range(s.horizon)
        target = torch.tensor(
            [
                math.log(cosine_factor(t, s.horizon, s.start_warmup, s.start_final_fraction))
                for t in steps
            ],
            dtype=torch.float64,
        )
        like = torch.zeros((), dtype=torch.float64)
        features = torch.stack([self.time_features(t, like) for t in steps])
        return torch.linalg.lstsq(features, target[:, None]).solution[:, 0].float()

    def unpack(self, theta: torch.Tensor) -> list[torch.Tensor]:
        if theta.shape[-1:] != (self.num_theta,):
            raise UsageError(f"adam_residual: theta needs {self.num_theta} values")
        return [
            block.view(shape)
            for block, shape in zip(theta.split(self._sizes), self.settings.shapes, strict=True)
        ]

    def init(self, params: Params) -> OptState:
        return zero_state(params, "moments", 2)

    def time_features(self, step: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``phi_t`` ``(S,)`` for update number ``step + 1`` of a run of ``horizon`` steps."""
        centres = torch.tensor(self.settings.centres, dtype=like.dtype, device=like.device)
        if not isinstance(step, torch.Tensor):
            step = torch.tensor(float(step), dtype=like.dtype, device=like.device)
        fraction = step.to(like.dtype) / self.settings.horizon
        ones = torch.ones(1, dtype=like.dtype, device=like.device)
        return torch.cat([torch.tanh(10.0 * (fraction - centres)), ones])

    def learning_rate(self, theta: torch.Tensor, step: int) -> float:
        """The learned schedule: the rate ``lr0 * exp(a . phi)`` that multiplies update number
        ``step`` (1-based, as ``Adam.learning_rate``), the correction aside."""
        a = self.unpack(theta.detach().cpu())[0]
        return self.settings.lr0 * math.exp(float(a @ self.time_features(step - 1, a)))

    def weight_decay(self, theta: torch.Tensor, step: int) -> float:
        """The learned decoupled weight decay ``wd0 * exp(c . phi)`` of update number ``step``
        (AdamW's ``weight_decay``: each update shrinks ``w`` by ``learning_rate * this``)."""
        if self.settings.wd0 == 0:
            return 0.0
        c = self.unpack(theta.detach().cpu())[5]
        return self.settings.wd0 * math.exp(float(c @ self.time_features(step - 1, c)))

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, OptState]:
        """One update (pure, differentiable, vmap-safe; ``reuse_buffers`` has no effect)."""
        del reuse_buffers
        s = self.settings
        a, w1, wt, b1, w2, *decay = self.unpack(theta)
        layout = param_layout(params)
        g = layout.flatten(grads)
        w = layout.flatten(params)
        step = state["step"] + 1
        m = torch.lerp(state["moments"][0], g, 1.0 - s.beta1)
        v = state["moments"][1] * s.beta2 + (1.0 - s.beta2) * g * g
        if isinstance(step, torch.Tensor):  # under vmap the step is a tensor
            bias1 = 1.0 - torch.pow(torch.as_tensor(s.beta1, dtype=g.dtype), step)
            root_bias2 = (1.0 - torch.pow(torch.as_tensor(s.beta2, dtype=g.dtype), step)).sqrt()
        else:
            bias1, root_bias2 = 1.0 - s.beta1**step, math.sqrt(1.0 - s.beta2**step)
        m_hat = m / bias1
        u = m_hat / (v.sqrt() / root_bias2 + s.eps)  # Adam's direction, as torch.optim.Adam
        phi = self.time_features(state["step"], g)
        scale = s.lr0 * torch.exp(a @ phi)
        step_dir = u  # Adam's direction, plus AdamW's decoupled decay of the current weights
        if decay:
            step_dir = u + s.wd0 * torch.exp(decay[0] @ phi) * w
        if s.hidden == 0:  # the learned schedules alone
            new_w = w - scale * step_dir
            return layout.unflatten(new_w), {"step": step, "moments": torch.stack([m, v])}
        rows = torch.stack([u, g, m_hat, w])  # (F, N)
        chunks = rows.split(layout.lengths, -1)
        features = torch.cat(
            [c * torch.rsqrt((c * c).mean(-1, keepdim=True) + RMS_EPS) for c in chunks], -1
        )
        linear = w1 @ features  # (H, N)
        shift = (wt @ phi + b1).unsqueeze(-1)
        correction = (w2 @ (torch.relu(linear + shift) - torch.relu(shift - linear)))[0]
        new_w = w - scale * (step_dir + correction)
        return layout.unflatten(new_w), {"step": step, "moments": torch.stack([m, v])}
