"""The flat layout of a tuple of parameter tensors, shared by the learner families.

Learned optimizers compute on all parameters at once: the tensors' elements concatenated into
one ``(N,)`` vector, with per-tensor features (an RMS) taken over each tensor's block of
columns. :func:`param_layout` gives that layout (cached per shapes, dtype and device); a
learner's state entries are ``(..., N)`` tensors in it (:class:`optimizers.base.Learner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.errors import UsageError
from optimizers.base import Params


@dataclass(frozen=True)
class ParamLayout:
    """How a tuple of parameter tensors maps onto one flat vector (cached per shapes/device).

    Attributes:
        shapes: the tensors' shapes, in order.
        lengths: their numbers of elements.
        segment: ``(N,)`` long tensor: the index of the tensor each flat element belongs to.
        inverse_counts: ``(1, T)``: ``1 / lengths``, for per-tensor means.
    """

    shapes: tuple[torch.Size, ...]
    lengths: tuple[int, ...]
    segment: torch.Tensor = field(repr=False)
    inverse_counts: torch.Tensor = field(repr=False)

    @property
    def numel(self) -> int:
        return sum(self.lengths)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N,)``: the tensors' elements concatenated (a copy)."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> Params:
        """Views of ``flat`` with the layout's shapes."""
        return tuple(
            chunk.view(shape)
            for chunk, shape in zip(flat.split(self.lengths), self.shapes, strict=True)
        )


_LAYOUTS: dict[tuple[Any, ...], ParamLayout] = {}


def param_layout(params: Sequence[torch.Tensor]) -> ParamLayout:
    """The (cached) layout of ``params``; under vmap, of the per-example shapes."""
    shapes = tuple(p.shape for p in params)
    device, dtype = params[0].device, params[0].dtype
    key = (shapes, device, dtype)
    layout = _LAYOUTS.get(key)
    if layout is None:
        lengths = tuple(math.prod(s) for s in shapes)
        if min(lengths, default=0) == 0:
            raise UsageError("the learned optimizer needs non-empty parameter tensors")
        counts = torch.tensor(lengths, dtype=dtype)
        layout = ParamLayout(
            shapes=shapes,
            lengths=lengths,
            segment=torch.repeat_interleave(torch.arange(len(lengths)), counts.long()).to(device),
            inverse_counts=(1.0 / counts).reshape(1, -1).to(device),
        )
        if len(_LAYOUTS) > 64:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def zero_state(params: Params, name: str, rows: int) -> dict[str, Any]:
    """A learner's state before the first update: ``{"step": 0, name: zeros (rows, N)}``, N
    the number of parameter elements, in ``params``' dtype and on their device (the layout of
    :class:`optimizers.base.Learner`'s state)."""
    layout = param_layout(params)
    ref = params[0]
    return {"step": 0, name: torch.zeros(rows, layout.numel, dtype=ref.dtype, device=ref.device)}
