"""The task contract: a dataset, a model and a loss, as pure functions of the parameters.

A task owns everything needed to train one model and nothing about how it is optimised::

    task = create_task("mnist5k_cnn16", device="cpu")
    params = task.init_params(seed=0)                # tuple of tensors on task.device
    batches = task.batches("train", seed=0)          # endless iterator of batches on task.device
    loss = task.loss(params, next(batches))          # scalar tensor, differentiable in params
    metrics = task.evaluate(params, "test")          # {"loss": ..., "accuracy": ...} over the split

* Determinism: ``init_params(seed)`` and ``batches(split, seed)`` depend only on their arguments
  and the task's configuration; the split of the data into train/valid/test is fixed by the
  task's ``split_seed`` and the splits are disjoint.
* Batches are prepared on the task's device by the iterator, so fetching one is cheap and the
  runner keeps it outside the timed region.
* ``evaluate`` averages over the whole split (not a minibatch) under ``torch.no_grad``.
* Targets (AlgoPerf's time-to-target, on the workload): ``targets`` declares, per split, the
  value of a metric a run must reach within ``Target.steps`` steps; performance profiles
  (:mod:`harness.results.profiles`) time every optimizer to the same declared target.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.registry import task_arguments

Params = tuple[torch.Tensor, ...]
Batch = tuple[torch.Tensor, ...]

SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Target:
    """A workload's target: reach ``value`` of ``metric`` (at or below it for a loss) on the
    whole ``split`` within ``steps`` optimizer steps.

    ``rule`` says how ``value`` was set (for the built-in tasks: from committed results, by
    :data:`TARGET_RULE`); the targets hold for the task's configuration that ``rule`` names."""

    split: str
    value: float
    steps: int
    metric: str = "loss"
    rule: str = ""


#: How the built-in tasks' targets are set (AlgoPerf derives its targets from the best tuned
#: baseline in the same way): the median over the evaluation seeds of the final whole-split
#: loss of the best tuned baseline (lowest mean final loss) of the comparison on that split,
#: rounded up to 3 significant digits; so that baseline reaches it on at least half its seeds.
TARGET_RULE = (
    "median final loss of the best tuned baseline over its evaluation seeds, rounded up to "
    "3 significant digits"
)


class Task(ABC):
    """Base class of every task plugin.

    Class attributes a subclass sets:
        default_steps: the step budget used when a run does not give one.
        pairs_with: shell-style patterns of the optimizer names this task is meant to be run
            with (default: all). Suites and ``lopt bench`` refuse other pairs.
        metrics: the metrics ``evaluate`` returns, ``loss`` first.
        targets: the workload's declared :class:`Target` per split (none by default).

    The registry sets ``name``. Constructor keyword arguments are the task's configuration
    (``lopt bench task=NAME task.batch_size=64``); every task takes ``device``.
    """

    name: ClassVar[str] = ""
    default_steps: ClassVar[int] = 1000
    pairs_with: ClassVar[tuple[str, ...]] = ("*",)
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    targets: ClassVar[tuple[Target, ...]] = ()

    def __init__(self, *, device: str | torch.device = "cpu", batch_size: int = 128) -> None:
        self.device = resolve_device(device)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise UsageError(
                f"{self.name}: batch_size must be a positive integer, got {batch_size!r}"
            )
        self.batch_size = batch_size

    @abstractmethod
    def init_params(self, seed: int) -> Params:
        """Freshly initialised parameters for ``seed``, on ``self.device``."""

    @abstractmethod
    def loss(self, params: Params, batch: Batch) -> torch.Tensor:
        """The mean loss of ``params`` on ``batch``: a scalar, differentiable in ``params``."""

    @abstractmethod
    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        """An endless iterator of batches of ``split``, in an order fixed by ``seed``."""

    @abstractmethod
    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        """Each of ``self.metrics`` averaged over the whole ``split``: a pure function of the
        instance, ``params`` and ``split`` (the runner reuses step 0's for equal parameters)."""

    @classmethod
    def pairs_with_optimizer(cls, optimizer: str) -> bool:
        """Whether ``optimizer`` matches one of ``pairs_with``."""
        return any(fnmatch.fnmatchcase(optimizer, pattern) for pattern in cls.pairs_with)

    @classmethod
    def target_for(cls, split: str, metric: str = "loss") -> Target | None:
        """The declared target on ``split`` and ``metric``, or None."""
        return next((t for t in cls.targets if t.split == split and t.metric == metric), None)

    @staticmethod
    def check_split(split: str) -> None:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")


def task_config(factory: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The task's full configuration: its keyword defaults updated by ``overrides``."""
    return {**{name: default for name, _, default in task_arguments(factory)}, **overrides}


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or ``UsageError`` if it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"invalid device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} is not available on this machine; use device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {device!r} is not available on this machine; use device=cpu")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev
