"""The ``vmap`` backend: any family architecture, B problems through ``torch.func.vmap``.

``grad_and_value`` of the model's cross-entropy (``torch.func.functional_call`` on one
:func:`tasks.families.member.build_model` template), vmapped over the rows of ``w`` [B, N] and
the problems' minibatches. It serves the conv nets (no hand-written backward) and, for MLPs, the
comparison against :mod:`~harness.meta.batched.mlp` (benchmarks/batched_throughput.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from tasks.families.base import FamilyTask
from tasks.families.member import build_model


class FunctionalModel:
    """One architecture as pure functions of a flat parameter row ``(N,)``."""

    def __init__(self, spec: FamilyTask) -> None:
        with torch.random.fork_rng(devices=[]):
            self.model = build_model(spec)
        self.names = tuple(name for name, _ in self.model.named_parameters())
        self.shapes = spec.shapes
        self.sizes = tuple(math.prod(s) for s in spec.shapes)
        self._loss_and_grad = vmap(grad_and_value(self.loss))
        self._logits_shared = vmap(self.logits, in_dims=(0, None))

    def params(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(row, self.sizes)
        return {
            name: part.view(shape)
            for name, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }

    def logits(self, row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, classes]`` of the parameters ``row`` on ``x`` ``[n, ...]``."""
        return functional_call(self.model, self.params(row), (x,))

    def loss(self, row: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(row, x), y)

    def loss_and_grad(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss ``[B]`` and gradient ``[B, N]``: ``w`` [B, N], ``x`` [B, n, ...], ``y``
        [B, n]."""
        grads, losses = self._loss_and_grad(w, x, y)
        return losses, grads

    def logits_shared(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n, classes]`` of every row of ``w`` on the same inputs ``x`` [n, ...]."""
        return self._logits_shared(w, x)
