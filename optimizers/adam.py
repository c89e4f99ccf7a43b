"""Adam (L2 weight decay in the gradient), AdamW (decoupled weight decay), and both with a
linear warm-up and a cosine learning-rate decay (``adam_cosine``, ``adamw_cosine``).

They follow ``torch.optim.Adam`` / ``torch.optim.AdamW`` step for step, bias correction included
(the cosine ones: under ``torch.optim.lr_scheduler.LambdaLR``; the decoupled decay uses the
scheduled rate, as torch's does).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from harness.errors import UsageError
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

    def learning_rate(self, step: int) -> float:
        """The learning rate of update number ``step`` (1-based); constant for Adam."""
        return float(self.hparams["lr"])

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        h = self.hparams
        beta1, beta2, eps, wd = h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
        step = state["step"] + 1
        lr = self.learning_rate(step)
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


def _schedule(warmup: int, tune_final_fraction: bool) -> tuple[HParam, ...]:
    """The schedule's hyperparameters: decay_steps, warmup and final_fraction."""
    return (
        HParam(
            "decay_steps",
            2000,
            "steps over which the rate decays (set it to the budget)",
            ge=1,
            low=100,
            high=100_000,
            log=True,
        ),
        HParam("warmup", warmup, "steps of linear learning-rate warm-up", ge=0, low=0, high=1000),
        HParam(
            "final_fraction",
            0.0,
            "the floor, as a fraction of lr",
            ge=0.0,
            le=1.0,
            low=0.0,
            high=0.1,
            tune=tune_final_fraction,
        ),
    )


@register_optimizer("adam_cosine")
class AdamCosine(Adam):
    """Adam with a linear warm-up, then a cosine decay of the learning rate to a floor.

    Update k (1-based) uses ``lr * f(k - 1)`` with, for t < warmup: ``f(t) = (t + 1) / warmup``;
    after it, ``f(t) = final_fraction + (1 - final_fraction) * (1 + cos(pi * p)) / 2`` with
    ``p = min(1, (t - warmup) / (decay_steps - warmup))``. Set ``decay_steps`` to the run's step
    budget so the decay ends with the run.
    """

    hparam_specs = (*Adam.hparam_specs, *_schedule(warmup=0, tune_final_fraction=False))

    def __init__(self, **hparams: object) -> None:
        super().__init__(**hparams)
        if self.hparams["warmup"] >= self.hparams["decay_steps"]:
            raise UsageError(
                f"{self.name or type(self).__name__}: warmup ({self.hparams['warmup']}) must be "
                f"below decay_steps ({self.hparams['decay_steps']})"
            )

    def learning_rate(self, step: int) -> float:
        return float(self.hparams["lr"]) * cosine_factor(
            step - 1,
            int(self.hparams["decay_steps"]),
            int(self.hparams["warmup"]),
            float(self.hparams["final_fraction"]),
        )


def cosine_factor(t: int, decay_steps: int, warmup: int, final_fraction: float) -> float:
    """The schedule's multiplier of the base rate after ``t`` updates (see AdamCosine)."""
    if t < warmup:
        return (t + 1) / warmup
    progress = min(1.0, (t - warmup) / (decay_steps - warmup))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


@register_optimizer("adamw_cosine")
class AdamWCosine(AdamCosine):
    """AdamW with a linear warm-up (100 steps by default), then a cosine decay to a floor: the
    schedule of :class:`AdamCosine`, the decoupled weight decay of :class:`AdamW` (applied with
    the scheduled rate). Its default search space is the learning rate, the weight decay
    (log-uniform in [1e-5, 1]) and the floor (``final_fraction``, uniform in [0, 0.1]); set
    ``decay_steps`` to the run's budget."""

    hparam_specs = (
        learning_rate(1e-3),
        *_BETAS_AND_EPS,
        HParam(
            "weight_decay",
            1e-2,
            "decoupled decay: w <- w * (1 - lr_t * weight_decay) each step",
            ge=0.0,
            low=1e-5,
            high=1.0,
            log=True,
            tune=True,
        ),
        *_schedule(warmup=100, tune_final_fraction=True),
    )
    decoupled_weight_decay = True
