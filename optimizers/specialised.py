"""``specialised``: a trained learned optimizer with most of its theta frozen, so that meta-training
on one task moves only a few named blocks (issue 24's "specialise it": the family-trained
optimizer's schedule, meta-trained on mnist5k_cnn16).

    lopt meta-train task=mnist5k_cnn16 learner=specialised \\
        +learner_cfg.base=nominal_mlp_mlp_mix_valid '+learner_cfg.trainable=[schedule]' \\
        estimator=es loss=final objective=valid ...

Settings (all recorded in the checkpoint, so it loads without the base file):

* ``base``: a shipped learned optimizer's name or a checkpoint path; read once, when
  ``base_theta`` is not given.
* ``trainable``: the base learner's blocks that meta-training moves (its ``theta_blocks()``;
  ``nominal_mlp``: ``schedule``, ``W1``, ``Wt``, ``b1``, ``W2``, ``b2``, ``W3``).
* ``base_family``, ``base_settings``, ``base_theta``: the base learner and its whole theta, as
  plain data (filled from ``base``).

Contract: ``theta`` is the trainable blocks' values, concatenated in the base's block order
(``num_theta`` of them); the update is the base learner's with the frozen values put back,
``full = base_theta * (1 - mask) + theta @ P^T`` (``mask`` is 1 at the trainable elements;
exact: each element is either the frozen value or the trained one), so at ``init_theta`` it
*is* the base checkpoint, bit for bit.
Differentiable in ``theta`` and ``vmap``-safe (a matrix product); the base's compiled path
applies wherever it would (no autograd).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import create_learner, register_learner
from optimizers.base import OptState, Params


@register_learner("specialised")
class Specialised:
    """A base learned optimizer with only the ``trainable`` blocks of its theta meta-trained."""

    family: ClassVar[str] = "specialised"

    def __init__(
        self,
        base: str | None = None,
        trainable: Sequence[str] = ("schedule",),
        base_family: str | None = None,
        base_settings: dict[str, Any] | None = None,
        base_theta: Sequence[float] | None = None,
        compile: bool | None = None,
    ) -> None:
        if base_theta is None:
            if not isinstance(base, str) or not base:
                raise UsageError(
                    "specialised: base must name a shipped learned optimizer or a checkpoint "
                    f"path (learner_cfg.base=...), got {base!r}"
                )
            from optimizers.checkpoint import load_lopt_checkpoint

            loaded = load_lopt_checkpoint(base)
            base_family, base_settings = loaded.learner.family, loaded.learner.record()
            theta = loaded.theta.detach().float().clone()
        else:
            if not isinstance(base_family, str) or not isinstance(base_settings, dict):
                raise UsageError(
                    "specialised: base_theta needs base_family (a learner name) and "
                    "base_settings (a mapping)"
                )
            values = list(base_theta)
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in values):
                raise UsageError("specialised: base_theta must be a list of finite numbers")
            theta = torch.tensor(values, dtype=torch.float32)
        if base_family == self.family:
            raise UsageError("specialised: the base must not itself be specialised")
        extra = {} if compile is None else {"compile": compile}
        self.base_learner = create_learner(base_family, **dict(base_settings), **extra)
        if theta.numel() != self.base_learner.num_theta:
            raise UsageError(
                f"specialised: base_theta has {theta.numel()} values, the {base_family} learner "
                f"needs {self.base_learner.num_theta}"
            )
        blocks_of = getattr(self.base_learner, "theta_blocks", None)
        if blocks_of is None:
            raise UsageError(
                f"specialised: the {base_family} learner does not name its theta's blocks "
                "(theta_blocks); nominal_mlp does"
            )
        blocks = blocks_of()
        names = [trainable] if isinstance(trainable, str) else list(trainable)
        unknown = [n for n in names if n not in blocks]
        if not names or unknown or len(set(names)) != len(names):
            raise UsageError(
                f"specialised: trainable must be distinct blocks of {base_family}'s theta "
                f"({', '.join(blocks)}), got {names!r}"
            )
        self.base = base
        self.trainable = [n for n in blocks if n in names]  # in the base's order
        self.base_family = base_family
        self.base_settings = dict(base_settings)
        index = [i for n in self.trainable for i in range(*blocks[n])]
        self.index = torch.tensor(index, dtype=torch.int64)
        self.base_theta = theta
        #: P (D, K): column k is one-hot at the k-th trainable element; mask = 1 there
        self.placement = torch.zeros(theta.numel(), len(index))
        self.placement[self.index, torch.arange(len(index))] = 1.0
        #: base_theta with the trainable elements zeroed (built once: apply is on the hot path)
        self.frozen = self.base_theta * (1.0 - self.placement.sum(1))

    # -- the Learner contract --------------------------------------------------------------------
    @property
    def num_theta(self) -> int:
        return int(self.index.numel())

    def record(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "trainable": list(self.trainable),
            "base_family": self.base_family,
            "base_settings": self.base_settings,
            "base_theta": [float(x) for x in self.base_theta.tolist()],
        }

    def init_theta(self, seed: int) -> torch.Tensor:
        """The base checkpoint's values of the trainable blocks (``seed`` is not used)."""
        del seed
        return self.base_theta[self.index].clone()

    def full_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """The base learner's theta ``(..., D)`` for the trainable values ``theta (..., K)``."""
        placement = self.placement.to(dtype=theta.dtype, device=theta.device)
        return self.frozen.to(dtype=theta.dtype, device=theta.device) + theta @ placement.T

    def init(self, params: Params) -> OptState:
        return self.base_learner.init(params)

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, OptState]:
        return self.base_learner.apply(
            self.full_theta(theta), grads, state, params, reuse_buffers=reuse_buffers
        )

    # -- what the base has: its schedule (learning_rate) and the batched interface ---------------
    def __getattr__(self, name: str) -> Any:
        """``learning_rate(theta, step)`` and ``batched_step(theta, ...)`` at the full theta,
        ``batched_init`` as is, where the base learner has them (else ``AttributeError``, so
        ``hasattr`` tells)."""
        wrapped = ("learning_rate", "batched_step")
        if name in (*wrapped, "batched_init") and "base_learner" in self.__dict__:
            method = getattr(self.base_learner, name)  # AttributeError if the base has none
            if name not in wrapped:
                return method

            def at_full_theta(theta: torch.Tensor, *args: Any) -> Any:
                return method(self.full_theta(theta), *args)

            return at_full_theta
        raise AttributeError(name)
