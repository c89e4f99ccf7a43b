"""lopt-harness: benchmark learned optimizers against tuned hand-designed ones.

The public API::

    from harness import create_task, create_optimizer, run
    result = run("mnist5k_cnn16", "adam", {"lr": 1e-3}, steps=300, seed=0)
    frame = result.frame()          # the tidy rows (see harness.results.schema)

Internal modules import from submodules (``harness.registry``), never from this package, so that
plugins can import the registry while it is still being set up.
"""

from harness._version import __version__
from harness.errors import DatasetUnavailableError, HarnessError, UnknownNameError, UsageError
from harness.registry import (
    create_learner,
    create_optimizer,
    create_task,
    list_optimizers,
    list_tasks,
    load_plugin_modules,
    register_learner,
    register_optimizer,
    register_task,
)
from harness.shadowing import check_shadowing

check_shadowing()  # a local tasks.py or optimizers.py would break the harness obscurely

__all__ = [
    "DatasetUnavailableError",
    "HarnessError",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "create_learner",
    "create_optimizer",
    "create_task",
    "list_optimizers",
    "list_tasks",
    "load_plugin_modules",
    "register_learner",
    "register_optimizer",
    "register_task",
    "run",
]


def __getattr__(name: str):  # the runner pulls in torch and pandas: import it on first use
    if name == "run":
        from harness.runner import run

        return run
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
