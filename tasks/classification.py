"""Supervised classification on an in-memory dataset with an ``nn.Module`` model.

:class:`ClassificationTask` implements the whole task contract for datasets that fit in memory:
the three splits live on the task's device as tensors, batches are gathered by index, and the
loss is the module's cross-entropy evaluated through ``torch.func.functional_call`` so that the
parameters stay an explicit argument. A subclass supplies :meth:`load_splits` and
:meth:`build_model`.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness.errors import UsageError
from tasks.base import SPLITS, Batch, Params, Task

EVAL_CHUNK = 2048  # examples per forward pass in evaluate()


@dataclass(frozen=True)
class Splits:
    """Inputs (float32, model layout) and integer labels for train, valid and test."""

    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


class ClassificationTask(Task):
    """A classifier trained with mean cross-entropy; metrics are loss and accuracy."""

    metrics = ("loss", "accuracy")

    def __init__(
        self, *, device: str | torch.device = "cpu", batch_size: int = 128, split_seed: int = 0
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise UsageError(f"{self.name}: split_seed must be an integer >= 0, got {split_seed!r}")
        self.split_seed = split_seed
        splits = self.load_splits(split_seed)
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
            name: (
                torch.as_tensor(getattr(splits, name)[0], dtype=torch.float32).to(self.device),
                torch.as_tensor(getattr(splits, name)[1], dtype=torch.long).to(self.device),
            )
            for name in SPLITS
        }
        self._model = self.build_model().to(self.device)
        self._param_names = tuple(name for name, _ in self._model.named_parameters())

    # -- what a subclass provides ------------------------------------------------------------
    @abstractmethod
    def load_splits(self, split_seed: int) -> Splits:
        """The dataset split into disjoint train/valid/test parts, fixed by ``split_seed``."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (uses the global torch RNG, seeded by the caller)."""

    # -- the task contract -------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        """The model's parameter names, in the order of the params tuple."""
        return self._param_names

    def split_size(self, split: str) -> int:
        self.check_split(split)
        return int(self._data[split][1].shape[0])

    def init_params(self, seed: int) -> Params:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        return tuple(p.detach().to(self.device) for p in model.parameters())

    def logits(self, params: Params, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(
            self._model, dict(zip(self._param_names, params, strict=True)), (inputs,)
        )

    def loss(self, params: Params, batch: Batch) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(self.logits(params, inputs), labels)

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        """Endless shuffled epochs of ``split``; each epoch drops its last partial batch
        (a split smaller than one batch is served whole)."""
        self.check_split(split)
        inputs, labels = self._data[split]
        n = labels.shape[0]
        size = min(self.batch_size, n)
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n - size + 1, size):
                index = order[start : start + size]
                yield inputs[index], labels[index]

    @torch.no_grad()
    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        self.check_split(split)
        inputs, labels = self._data[split]
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for start in range(0, labels.shape[0], EVAL_CHUNK):
            x, y = inputs[start : start + EVAL_CHUNK], labels[start : start + EVAL_CHUNK]
            logits = self.logits(params, x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
        n = labels.shape[0]
        return {"loss": float(total_loss) / n, "accuracy": float(correct) / n}


def stratified_split(
    labels: np.ndarray, sizes: tuple[int, ...], seed: int
) -> tuple[np.ndarray, ...]:
    """Disjoint index arrays of exactly the given sizes, each with the class proportions of
    ``labels`` (up to rounding), fixed by ``seed``. ``sum(sizes)`` may be less than ``len(labels)``.

    Within each class the examples are shuffled and given evenly spaced ranks in (0, 1); sorting
    all examples by rank interleaves the classes, so every consecutive slice is stratified.
    """
    if sum(sizes) > len(labels) or min(sizes, default=0) < 0:
        raise ValueError(f"split sizes {sizes} do not fit the {len(labels)} examples")
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(rank, kind="stable")
    bounds = np.cumsum((0, *sizes))
    return tuple(rng.permutation(order[a:b]) for a, b in itertools.pairwise(bounds))
