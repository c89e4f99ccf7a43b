"""Stochastic gradient descent: plain, with heavy-ball momentum (optionally Nesterov), and
Nesterov momentum under its own name (``nesterov``, so it is tuned as a baseline of its own).

All follow ``torch.optim.SGD`` step for step (dampening 0): the tests check the trajectories
against it to 1e-6.
"""

from __future__ import annotations

import torch

from harness.registry import register_optimizer
from optimizers.base import HParam, Optimizer, OptState, Params, learning_rate, weight_decay


@register_optimizer("sgd")
class SGD(Optimizer):
    """Plain SGD: w <- w - lr * (g + weight_decay * w)."""

    hparam_specs = (learning_rate(0.1, high=10.0), weight_decay())

    def init(self, params: Params) -> OptState:
        return {"step": 0}

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        new_params = torch._foreach_add(params, grads, alpha=-lr)
        return tuple(new_params), {"step": state["step"] + 1}


_MOMENTUM = HParam("momentum", 0.9, "momentum coefficient mu", ge=0.0, lt=1.0, low=0.5, high=0.999)


@register_optimizer("momentum")
class Momentum(Optimizer):
    """Heavy-ball momentum: b <- mu * b + g; w <- w - lr * b (Nesterov: w - lr * (g + mu * b))."""

    hparam_specs = (
        learning_rate(0.01),
        _MOMENTUM,
        HParam("nesterov", False, "use Nesterov's look-ahead form"),
        weight_decay(),
    )

    def _nesterov(self) -> bool:
        return bool(self.hparams["nesterov"])

    def init(self, params: Params) -> OptState:
        return {"step": 0, "momentum_buffer": tuple(torch.zeros_like(p) for p in params)}

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        lr, mu, wd = self.hparams["lr"], self.hparams["momentum"], self.hparams["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        # Zero-initialised buffer: mu * 0 + g == g exactly, as torch's first-step clone.
        buffer = torch._foreach_mul(state["momentum_buffer"], mu)
        torch._foreach_add_(buffer, grads)
        direction = torch._foreach_add(grads, buffer, alpha=mu) if self._nesterov() else buffer
        new_params = torch._foreach_add(params, direction, alpha=-lr)
        return tuple(new_params), {"step": state["step"] + 1, "momentum_buffer": tuple(buffer)}


@register_optimizer("nesterov")
class Nesterov(Momentum):
    """Nesterov momentum: b <- mu * b + g; w <- w - lr * (g + mu * b) (``torch.optim.SGD`` with
    ``nesterov=True``)."""

    hparam_specs = (learning_rate(0.01), _MOMENTUM, weight_decay())

    def _nesterov(self) -> bool:
        return True
