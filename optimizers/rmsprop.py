"""RMSProp (Tieleman & Hinton 2012), optionally centered and with momentum.

Follows ``torch.optim.RMSprop`` step for step.
"""

from __future__ import annotations

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


@register_optimizer("rmsprop")
class RMSProp(Optimizer):
    """RMSProp: divide the gradient by a running root mean square of recent gradients."""

    hparam_specs = (
        learning_rate(1e-2),
        HParam(
            "alpha",
            0.99,
            "decay of the squared-gradient average",
            ge=0.0,
            lt=1.0,
            low=0.9,
            high=0.9999,
        ),
        HParam(
            "eps", 1e-8, "added to the root mean square", gt=0.0, low=1e-10, high=1e-1, log=True
        ),
        HParam(
            "momentum", 0.0, "momentum on the scaled gradient", ge=0.0, lt=1.0, low=0.0, high=0.99
        ),
        HParam("centered", False, "divide by the gradient's estimated standard deviation"),
        weight_decay(),
    )

    def init(self, params: Params) -> OptState:
        state: OptState = {"step": 0, "square_avg": tuple(torch.zeros_like(p) for p in params)}
        if self.hparams["centered"]:
            state["grad_avg"] = tuple(torch.zeros_like(p) for p in params)
        if self.hparams["momentum"] > 0:
            state["momentum_buffer"] = tuple(torch.zeros_like(p) for p in params)
        return state

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        h = self.hparams
        lr, alpha, eps, mu, wd = h["lr"], h["alpha"], h["eps"], h["momentum"], h["weight_decay"]
        if wd:
            grads = tuple(torch._foreach_add(grads, params, alpha=wd))
        new_state: OptState = {"step": state["step"] + 1}
        square_avg = torch._foreach_mul(state["square_avg"], alpha)
        torch._foreach_addcmul_(square_avg, grads, grads, value=1.0 - alpha)
        new_state["square_avg"] = tuple(square_avg)
        if h["centered"]:
            grad_avg = torch._foreach_lerp(state["grad_avg"], grads, 1.0 - alpha)
            avg = torch._foreach_sqrt(
                torch._foreach_addcmul(square_avg, grad_avg, grad_avg, value=-1.0)
            )
            new_state["grad_avg"] = tuple(grad_avg)
        else:
            avg = torch._foreach_sqrt(square_avg)
        avg = torch._foreach_add(avg, eps)  # not in place: sqrt's backward needs its output
        if mu > 0:
            buffer = torch._foreach_mul(state["momentum_buffer"], mu)
            torch._foreach_addcdiv_(buffer, grads, avg)
            new_params = torch._foreach_add(params, buffer, alpha=-lr)
            new_state["momentum_buffer"] = tuple(buffer)
        else:
            new_params = addcdiv(params, grads, avg, value=-lr)
        return tuple(new_params), new_state
