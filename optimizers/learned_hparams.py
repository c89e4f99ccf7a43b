"""Learnable hyperparameters: SGD with heavy-ball momentum whose theta is ``[log lr, logit b]``.

The smallest "learned optimizer" there is, for the pathology study (``harness/pathology``)::

    m <- b m + g            (zero-initialised, the current gradient included)
    w <- w - lr m
    lr = exp(theta[0]),  b = sigmoid(theta[1])   (learn_momentum; else b is the fixed momentum)

It exposes the interface the meta-training machinery uses for the learned optimizer
(:class:`optimizers.learned.LearnedOptimizer`), so :class:`harness.meta.truncation.InnerProblems`
and :func:`harness.meta.estimators.antithetic_pair` drive it unchanged:

* ``init(params)`` -> ``{"step": 0, "accumulators": (1, N) zeros}`` (N: all parameters);
* ``apply(theta, grads, state, params, reuse_buffers=False)`` -> ``(new_params, new_state)``,
  pure and differentiable in ``theta``, the gradients and the parameters, correct under
  ``torch.func.vmap`` (a per-example ``theta``);
* ``architecture`` (:class:`HParamArchitecture`: ``num_theta``, ``num_accumulators``,
  ``to_dict``) and ``theta`` (the current meta-parameters).

With ``learn_momentum=False`` and ``momentum=0`` it is plain SGD with theta = [log lr]. On the
quadratic task (largest Hessian eigenvalue ``lambda_max``) gradient descent is stable for
``lr < 2 / lambda_max`` (momentum ``b``: ``lr < 2 (1 + b) / lambda_max``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness.errors import UsageError
from optimizers.base import Params
from optimizers.learned import param_layout

#: names of theta's elements, in order (the second only with ``learn_momentum``)
THETA_NAMES: tuple[str, ...] = ("log_lr", "logit_momentum")


@dataclass(frozen=True)
class HParamArchitecture:
    """The shape of theta.

    Attributes:
        learn_momentum: theta is ``[log lr, logit b]`` (2 values); otherwise ``[log lr]`` and the
            momentum is the constant ``momentum``.
        momentum: the fixed momentum ``b`` when it is not learned (0: plain SGD).
    """

    learn_momentum: bool = True
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.learn_momentum, bool):
            raise UsageError(f"learn_momentum must be true or false, got {self.learn_momentum!r}")
        value = self.momentum
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
            raise UsageError(f"momentum must be >= 0 and < 1, got {value!r}")

    @property
    def num_theta(self) -> int:
        """1 or 2."""
        return 2 if self.learn_momentum else 1

    @property
    def num_accumulators(self) -> int:
        """One momentum row."""
        return 1

    @property
    def theta_names(self) -> tuple[str, ...]:
        return THETA_NAMES[: self.num_theta]

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def encode_theta(lr: float, momentum: float = 0.0, *, learn_momentum: bool = True) -> torch.Tensor:
    """``[log lr, logit momentum]`` (float32), or ``[log lr]`` without ``learn_momentum``.

    ``momentum`` must be in (0, 1) when it is learned (its logit is finite)."""
    if not lr > 0:
        raise UsageError(f"lr must be > 0, got {lr!r}")
    values = [math.log(lr)]
    if learn_momentum:
        if not 0 < momentum < 1:
            raise UsageError(f"a learned momentum must be in (0, 1), got {momentum!r}")
        values.append(math.log(momentum) - math.log1p(-momentum))
    return torch.tensor(values, dtype=torch.float32)


def decode_theta(theta: torch.Tensor, architecture: HParamArchitecture) -> tuple[Any, Any]:
    """``(lr, momentum)`` from ``theta`` (tensors when learned; the momentum may be a float)."""
    if theta.shape[-1:] != (architecture.num_theta,):
        raise UsageError(
            f"theta has {theta.shape[-1] if theta.dim() else 0} values; the architecture needs "
            f"{architecture.num_theta}"
        )
    lr = torch.exp(theta[..., 0])
    momentum = (
        torch.sigmoid(theta[..., 1]) if architecture.learn_momentum else architecture.momentum
    )
    return lr, momentum


class LearnedHParams:
    """SGD with heavy-ball momentum, theta = ``[log lr, logit momentum]`` or ``[log lr]``.

    Not a registered harness optimizer: it exists for the pathology study, which drives it
    through :class:`harness.meta.truncation.InnerProblems` like the learned optimizer.
    State: ``{"step": t, "accumulators": (1, N)}`` (the momentum buffer).
    """

    def __init__(self, theta: torch.Tensor, architecture: HParamArchitecture | None = None) -> None:
        self.architecture = architecture or HParamArchitecture()
        decode_theta(theta, self.architecture)  # checks the size
        self.theta = theta.detach().clone()

    @classmethod
    def from_theta(
        cls, theta: torch.Tensor, architecture: HParamArchitecture | None = None
    ) -> LearnedHParams:
        """The optimizer with these meta-parameters (architecture default: learned momentum)."""
        return cls(theta, architecture)

    def init(self, params: Params) -> dict[str, Any]:
        layout = param_layout(params)
        ref = params[0]
        return {
            "step": 0,
            "accumulators": torch.zeros(1, layout.numel, dtype=ref.dtype, device=ref.device),
        }

    def update(
        self, grads: Params, state: dict[str, Any], params: Params
    ) -> tuple[Params, dict[str, Any]]:
        """One step with the stored theta."""
        theta = self.theta.to(device=params[0].device, dtype=params[0].dtype)
        return self.apply(theta, grads, state, params)

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: dict[str, Any],
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, dict[str, Any]]:
        """One step with the meta-parameters ``theta`` (differentiable; per-example under vmap).
        ``reuse_buffers`` is accepted for the learned optimizer's interface and ignored."""
        del reuse_buffers
        layout = param_layout(params)
        lr, momentum = decode_theta(theta, self.architecture)
        grad = layout.flatten(grads)
        buffer = state["accumulators"][0] * momentum + grad
        new_flat = layout.flatten(params) - lr * buffer
        new_state = {"step": state["step"] + 1, "accumulators": buffer.unsqueeze(0)}
        return layout.unflatten(new_flat), new_state
