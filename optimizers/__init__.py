"""Optimizer plugins. Importing this package registers the built-ins.

The contract every optimizer follows is in :mod:`optimizers.base`; add your own with
``@register_optimizer("name")`` on an :class:`~optimizers.base.Optimizer` subclass (see README).
Learned-optimizer families (what ``lopt meta-train`` trains) follow
:class:`~optimizers.base.Learner` and register with ``@register_learner("name")``; with its
meta-parameters fixed a learner is an ordinary optimizer (:func:`optimizers.learned.opt_fn`).
"""

from optimizers import (  # noqa: F401  (registration)
    adam,
    adam_residual,
    learned,
    learned_hparams,
    metz_mlp,
    nominal_mlp,
    pretrained,
    rmsprop,
    sgd,
    specialised,
)
from optimizers.base import (
    HParam,
    Learner,
    MetaLearnable,
    Optimizer,
    OptState,
    Params,
    TorchOptimizer,
)

__all__ = [
    "HParam",
    "Learner",
    "MetaLearnable",
    "OptState",
    "Optimizer",
    "Params",
    "TorchOptimizer",
]
