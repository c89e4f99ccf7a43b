"""A learned optimizer with its meta-parameters fixed: an ordinary optimizer (plugin ``learned``).

One contract for every learned optimizer, as in learned_optimization (``opt_fn(theta)``): a
*learner* (:class:`optimizers.base.Learner`: a family of learned optimizers, its ``theta``
layout, ``init_theta``, and ``apply(theta, ...)``) with a fixed ``theta`` IS an optimizer of the
functional contract (:class:`optimizers.base.Optimizer`)::

    optimizer = opt_fn(learner, theta)          # LearnedOptimizer: init / update, nothing else
    state = optimizer.init(params)
    params, state = optimizer.update(grads, state, params)   # == learner.apply(theta, ...)

:class:`LearnedOptimizer` is that optimizer. Registered as ``learned`` (old name ``lopt``), it
serves the ``theta`` of a meta-trained checkpoint of any learner family
(``optimizer.checkpoint=PATH`` or a shipped name such as ``lopt_mnist5k_train``); the runner,
:class:`optimizers.torch_optim.TorchLearnedOptimizer` (the torch.optim form) and held-out
evaluation during meta-training all use it. Meta-training itself differentiates or perturbs
``theta``, so it calls ``learner.apply`` directly; nothing here has a second contract.

The paper's learner (``metz_mlp``, old name ``mlp``) is in :mod:`optimizers.metz_mlp`; its names
(``LOptArchitecture``, ``MLPLearner``, ``init_theta``, ...) and :func:`param_layout` are still
importable from here, as before.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import optimizer_alias, register_optimizer
from optimizers.base import HParam, Learner, Optimizer, OptState, Params
from optimizers.layout import ParamLayout, param_layout
from optimizers.metz_mlp import (
    DECAYS,
    TIME_SCALES,
    UNTRAINED_SEED,
    LOptArchitecture,
    MetzMLP,
    MetzMLPArchitecture,
    MLPLearner,
    init_theta,
    lopt_update,
    metz_mlp_update,
    momentum_start,
    time_features,
    unpack_theta,
    wire_feature,
)

__all__ = [
    "DECAYS",
    "TIME_SCALES",
    "UNTRAINED_SEED",
    "LOptArchitecture",
    "LearnedOptimizer",
    "MLPLearner",
    "MetzMLP",
    "MetzMLPArchitecture",
    "ParamLayout",
    "init_theta",
    "lopt_update",
    "metz_mlp_update",
    "momentum_start",
    "opt_fn",
    "param_layout",
    "time_features",
    "unpack_theta",
    "wire_feature",
]


@register_optimizer("learned")
class LearnedOptimizer(Optimizer):
    """Learned optimizer served from a meta-trained checkpoint (any learner family).

    ``checkpoint`` is a file written by ``lopt meta-train`` (``DIR/lopt.pt``) or the name of a
    shipped one (``lopt_mnist5k_train``); left empty, the optimizer is the untrained paper
    optimizer (family ``metz_mlp``, ``theta`` = :func:`init_theta` with seed 0). The checkpoint
    is loaded, without executing code, when the optimizer is built, so a bad path fails before
    any run starts. :func:`opt_fn` (or :meth:`from_theta`) serves a ``theta`` held in memory.

    State and arithmetic are the learner's (:class:`optimizers.base.Learner`); ``update`` is
    ``learner.apply(theta, ...)`` with ``self.theta``, pure and differentiable in the gradients
    and the parameters. Attributes: ``learner``, ``theta`` ``(P,)`` (a detached copy) and
    ``meta_training`` (the checkpoint's record; empty otherwise).
    """

    hparam_specs = (
        HParam(
            "checkpoint",
            "",
            "checkpoint written by `lopt meta-train`, or a shipped name (empty: untrained)",
        ),
    )

    #: set by :mod:`optimizers.pretrained` for the shipped checkpoints served by name
    pretrained_checkpoint: ClassVar[str] = ""

    def __init__(
        self,
        *,
        learner: Learner | None = None,
        theta: torch.Tensor | None = None,
        **hparams: Any,
    ) -> None:
        super().__init__(**hparams)
        path = str(self.hparams.get("checkpoint", "") or self.pretrained_checkpoint)
        if (learner is None) != (theta is None):
            raise UsageError("give a learned optimizer both a learner and a theta, or neither")
        if learner is not None and path:
            raise UsageError("give a learned optimizer a checkpoint or a theta, not both")
        self.meta_training: dict[str, Any] = {}
        if learner is None and path:
            from optimizers.checkpoint import load_lopt_checkpoint

            loaded = load_lopt_checkpoint(path)
            learner, theta = loaded.learner, loaded.theta
            self.meta_training = loaded.meta_training
        elif learner is None:
            learner = MetzMLP.of()
            theta = learner.init_theta(UNTRAINED_SEED)
        assert theta is not None
        if theta.shape != (learner.num_theta,):
            raise UsageError(
                f"theta has shape {tuple(theta.shape)}; the learner {learner.family} needs "
                f"({learner.num_theta},)"
            )
        self.learner: Learner = learner
        self.theta = theta.detach().clone()
        self._theta_on: dict[tuple[Any, ...], torch.Tensor] = {}

    def learning_rate(self, step: int) -> float | None:
        """The learning rate of update number ``step`` (1-based) for families with a learned
        schedule (``adam_residual``: ``lr0 * exp(a . phi_t)``); None for the others."""
        schedule = getattr(self.learner, "learning_rate", None)
        return None if schedule is None else float(schedule(self.theta, step))

    @classmethod
    def from_theta(
        cls,
        theta: torch.Tensor,
        learner: Learner | MetzMLPArchitecture | None = None,
    ) -> LearnedOptimizer:
        """The learned optimizer with these meta-parameters (no checkpoint file); ``learner``
        defaults to the paper's MLP (a :class:`MetzMLPArchitecture` selects its settings)."""
        if learner is None or isinstance(learner, MetzMLPArchitecture):
            learner = MetzMLP.of(learner)
        return cls(learner=learner, theta=theta)

    @property
    def architecture(self) -> Any:
        """The learner's architecture record (for the MLP: its :class:`MetzMLPArchitecture`)."""
        return getattr(self.learner, "architecture", None)

    def init(self, params: Params) -> OptState:
        return self.learner.init(params)

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        ref = params[0]
        key = (ref.device, ref.dtype)
        theta = self._theta_on.get(key)
        if theta is None:
            theta = self._theta_on[key] = self.theta.to(device=ref.device, dtype=ref.dtype)
        # without autograd (the runner, TorchLearnedOptimizer.step) large intermediates are
        # reused across calls
        return self.learner.apply(
            theta, grads, state, params, reuse_buffers=not torch.is_grad_enabled()
        )


#: the old name of the plugin (``optimizer=lopt``): the same optimizer, whose bench rows say lopt
LoptAlias = optimizer_alias("lopt", LearnedOptimizer)


def opt_fn(learner: Learner, theta: torch.Tensor) -> LearnedOptimizer:
    """The ordinary optimizer that is ``learner`` with its meta-parameters fixed at ``theta``
    (``(learner.num_theta,)``, copied): learned_optimization's ``opt_fn(theta)``."""
    return LearnedOptimizer(learner=learner, theta=theta)


# -- torch.optim ---------------------------------------------------------------------------------
def __getattr__(name: str) -> Any:
    """``LOpt`` (the torch.optim class, now :class:`optimizers.torch_optim.TorchLearnedOptimizer`)
    lives in :mod:`optimizers.torch_optim`; ``from optimizers.learned import LOpt`` keeps working
    (resolved on first access, so the two modules import no cycle)."""
    if name == "LOpt":
        from optimizers.torch_optim import LOpt

        return LOpt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
