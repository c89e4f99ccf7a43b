"""Adam (L2 weight decay in the gradient) and AdamW (decoupled weight decay).

Both follow ``torch.optim.Adam`` / ``torch.optim.AdamW`` step for step, bias correction included.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.registry import register_optimizer
from optimizers.base import (
    HParam,
    Optimizer,
    OptState,
    Params,
    addcdiv,
    learning_rate,
    weight_decay,
)

_BETAS_AND_EPS = (
    HParam("beta1", 0.9, "decay of the first moment", ge=0.0, lt=1.0, low=0.5, high=0.999),
    HParam("beta2", 0.999, "decay of the second moment", ge=0.0, lt=1.0, low=0.9, high=0.99999),
    HParam("eps", 1e-8, "added to the root second moment", gt=0.0, low=1e-10, high=1e-1, log=True),
)


@register_optimizer("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; weight_decay is an L2 term in the gradient."""

    hparam_specs = (learning_rate(1e-3), *_BETAS_AND_EPS, weight_decay())
    decoupled_weight_decay: ClassVar[bool] = False

    def init(self, params: Params) -> OptState:
        return {
            "step": 0,
            "exp_avg": tuple(torch.zeros_like(p) for p in params),
            "exp_avg_sq": tuple(torch.zeros_like(p) for p in params),
        }

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        h = self.hparams
        lr, beta1, beta2, eps, wd = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
        step = state["step"] + 1
        if wd and self.decoupled_weight_decay:
            params = tuple(torch._foreach_mul(params, 1.0 - lr * wd))
        elif wd:
            grads = tuple(torch._foreach_add(grads, params, alpha=wd))
        exp_avg = torch._foreach_lerp(state["exp_avg"], grads, 1.0 - beta1)
        exp_avg_sq = torch._foreach_mul(state["exp_avg_sq"], beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2 = 1.0 - beta2**step
        # No in-place op on sqrt's output: its backward needs it (meta-training differentiates
        # through update).
        denom = torch._foreach_div(torch._foreach_sqrt(exp_avg_sq), bias_correction2**0.5)
        torch._foreach_add_(denom, eps)
        new_params = addcdiv(params, exp_avg, denom, value=-lr / bias_correction1)
        return new_params, {
            "step": step,
            "exp_avg": tuple(exp_avg),
            "exp_avg_sq": tuple(exp_avg_sq),
        }


@register_optimizer("adamw")
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with weight decay applied to the weights."""

    hparam_specs = (
        learning_rate(1e-3),
        *_BETAS_AND_EPS,
        weight_decay(1e-2, "decoupled decay: w <- w * (1 - lr * weight_decay) each step"),
    )
    decoupled_weight_decay = True
