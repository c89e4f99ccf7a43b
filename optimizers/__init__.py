"""Optimizer plugins. Importing this package registers the built-ins.

The contract every optimizer follows is in :mod:`optimizers.base`; add your own with
``@register_optimizer("name")`` on an :class:`~optimizers.base.Optimizer` subclass (see README).
"""

from optimizers import adam, learned, pretrained, rmsprop, sgd  # noqa: F401  (registration)
from optimizers.base import HParam, Optimizer, OptState, Params, TorchOptimizer

__all__ = ["HParam", "OptState", "Optimizer", "Params", "TorchOptimizer"]
