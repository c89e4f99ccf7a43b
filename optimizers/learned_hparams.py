"""Learnable hyperparameters: SGD with heavy-ball momentum whose theta is ``[log lr, logit b]``.

The smallest "learned optimizer" there is, for the pathology study (``harness/pathology``)::

    m <- b m + g            (zero-initialised, the current gradient included)
    w <- w - lr m
    lr = exp(theta[0]),  b = sigmoid(theta[1])   (learn_momentum; else b is the fixed momentum)

It is a learner family (``learner=hparams``, :class:`optimizers.base.Learner`), so
meta-training drives it exactly as it drives the paper's MLP: state
``{"step": t, "accumulators": (1, N)}`` (the momentum buffer), settings ``learn_momentum`` and
``momentum`` (:class:`HParamArchitecture`). With a theta it is served as an ordinary optimizer by
:class:`optimizers.learned.LearnedOptimizer` (``LearnedOptimizer.from_theta(theta, learner)``).

With ``learn_momentum=False`` and ``momentum=0`` it is plain SGD with theta = [log lr]. On the
quadratic task (largest Hessian eigenvalue ``lambda_max``) gradient descent is stable for
``lr < 2 / lambda_max`` (momentum ``b``: ``lr < 2 (1 + b) / lambda_max``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import register_learner
from optimizers.base import Params
from optimizers.layout import param_layout, zero_state


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


@register_learner("hparams")
class LearnedHParams:
    """SGD with heavy-ball momentum, theta = ``[log lr, logit momentum]`` or ``[log lr]``.

    A learner family (``learner=hparams``) for the pathology study and as the smallest example
    of the :class:`optimizers.base.Learner` contract. Settings: those of
    :class:`HParamArchitecture`. ``init_theta`` is lr 0.1 and momentum 0.5 for every seed.
    """

    family: ClassVar[str] = "hparams"

    def __init__(self, learn_momentum: bool = True, momentum: float = 0.0) -> None:
        self.architecture = HParamArchitecture(learn_momentum=learn_momentum, momentum=momentum)

    @classmethod
    def of(cls, architecture: HParamArchitecture) -> LearnedHParams:
        return cls(**architecture.to_dict())

    @property
    def num_theta(self) -> int:
        return self.architecture.num_theta

    def init_theta(self, seed: int) -> torch.Tensor:
        del seed  # deterministic: a moderate step, whatever the seed
        return encode_theta(0.1, 0.5, learn_momentum=self.architecture.learn_momentum)

    def record(self) -> dict[str, Any]:
        return self.architecture.to_dict()

    def init(self, params: Params) -> dict[str, Any]:
        return zero_state(params, "accumulators", 1)

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
        ``reuse_buffers`` is part of the contract and has nothing to reuse here."""
        del reuse_buffers
        layout = param_layout(params)
        lr, momentum = decode_theta(theta, self.architecture)
        grad = layout.flatten(grads)
        buffer = state["accumulators"][0] * momentum + grad
        new_flat = layout.flatten(params) - lr * buffer
        new_state = {"step": state["step"] + 1, "accumulators": buffer.unsqueeze(0)}
        return layout.unflatten(new_flat), new_state
