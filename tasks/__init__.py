"""Task plugins. Importing this package registers the built-ins.

The contract every task follows is in :mod:`tasks.base`; in-memory classification datasets can
subclass :class:`tasks.classification.ClassificationTask`. Dataset loaders are in :mod:`tasks.data`.
"""

# registration side effect (the families register a task plugin each, too)
from tasks import charlm, cnn16, digits_mlp, families, quadratic  # noqa: F401
from tasks.base import SPLITS, Batch, Params, Task

__all__ = ["SPLITS", "Batch", "Params", "Task"]
