"""Task plugins. Importing this package registers the built-ins.

The contract every task follows is in :mod:`tasks.base`; in-memory classification datasets can
subclass :class:`tasks.classification.ClassificationTask`. Dataset loaders are in :mod:`tasks.data`.
"""

from tasks import charlm, cnn16, digits_mlp, quadratic  # noqa: F401  (registration side effect)
from tasks.base import SPLITS, Batch, Params, Task

__all__ = ["SPLITS", "Batch", "Params", "Task"]
