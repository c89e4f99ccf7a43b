"""What the batched engine needs of a learned optimizer, and batched Adam.

:class:`BatchedLearner` is the batched counterpart of :class:`optimizers.base.Learner`:
one row of ``theta`` per problem, parameters and gradients as ``[B, N]`` rows, the step counter
and the horizon as ``[B]`` int64 tensors, so problems at different inner steps (staggered starts)
advance in one call. :class:`BatchedAdam` implements it (``theta``: the log of a learning-rate
multiplier, so ``theta = 0`` is plain Adam, as ``torch.optim.Adam``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from optimizers.nominal_kernel import sqrt_zero_grad


@runtime_checkable
class BatchedLearner(Protocol):
    """A learned optimizer applied to B problems at once.

    * ``num_theta``: D, the length of one problem's meta-parameters.
    * ``batched_init(w)``: the state before the first update, for ``w`` [B, N]: a dict of
      tensors, each ``[B, ...]`` (the per-problem rows in the leading dimension).
    * ``batched_step(theta, w, g, state, step, horizon, segments)`` -> ``(new_w, new_state)``:
      ``theta`` [B, D] (one row per problem: antithetic pairs are rows ``theta + eps`` and
      ``theta - eps``), ``w`` and ``g`` [B, N], ``step`` [B] int64 (updates applied so far in
      each problem's inner run), ``horizon`` [B] int64 (its inner run's length), ``segments``
      the parameter tensors' lengths in the row layout (for per-tensor features). Pure: the
      inputs are left untouched.
    """

    @property
    def num_theta(self) -> int: ...

    def batched_init(self, w: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def batched_step(
        self,
        theta: torch.Tensor,
        w: torch.Tensor,
        g: torch.Tensor,
        state: dict[str, torch.Tensor],
        step: torch.Tensor,
        horizon: torch.Tensor,
        segments: tuple[int, ...],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class BatchedAdam:
    """Adam on the rows of ``[B, N]``, with a learned learning-rate multiplier.

    ``lr_i = lr * exp(theta[i, 0])``; otherwise ``torch.optim.Adam`` step for step (bias
    corrections with ``t = step + 1``; ``eps`` added after the square root). State: ``m`` and
    ``v``, each ``[B, N]``.
    """

    num_theta = 1

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def init_theta(self, seed: int = 0) -> torch.Tensor:
        """``(1,)`` zeros: plain Adam at ``lr``."""
        return torch.zeros(self.num_theta)

    def batched_init(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"m": torch.zeros_like(w), "v": torch.zeros_like(w)}

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
        t = (step + 1).to(w.dtype).unsqueeze(1)
        m = state["m"].lerp(g, 1.0 - self.beta1)
        v = state["v"].mul(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
        bias1 = 1.0 - torch.pow(self.beta1, t)
        bias2_sqrt = torch.sqrt(1.0 - torch.pow(self.beta2, t))
        step_size = self.lr * torch.exp(theta[:, :1].to(w.dtype)) / bias1
        denom = sqrt_zero_grad(v) / bias2_sqrt + self.eps  # out of place: differentiable
        new_w = w - m.div(denom).mul_(step_size)
        return new_w, {"m": m, "v": v}

    def describe(self) -> str:
        return f"batched Adam (lr {self.lr:g} x exp(theta), betas {self.beta1:g}/{self.beta2:g})"
