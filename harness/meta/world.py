"""The ranks a meta-training run spans: :class:`World` (one process) and
:class:`TorchDistributedWorld` (the ranks of a ``torch.distributed`` process group).

The trainer sees only this interface (rank, size, the problems a rank owns and three
collectives); :mod:`harness.meta.distributed` joins the process group and launches the ranks.
"""

from __future__ import annotations

from typing import Any

import torch


class World:
    """A single process: rank 0 of 1; every collective is the identity."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_problems(self, num_problems: int) -> list[int]:
        """The indices of the inner problems this rank owns."""
        return list(range(self.rank, num_problems, self.size))

    def all_reduce_sum(self, vector: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``vector`` over all ranks (on every rank)."""
        return vector

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        return [obj]

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj


class TorchDistributedWorld(World):
    """The ranks of an initialised ``torch.distributed`` process group."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised")
        self._dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.device = device

    def all_reduce_sum(self, vector: torch.Tensor) -> torch.Tensor:
        on_device = vector.to(self.device).contiguous()
        self._dist.all_reduce(on_device, op=self._dist.ReduceOp.SUM)
        return on_device.to(vector.device)

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        received: list[Any] | None = [None] * self.size if self.rank == 0 else None
        self._dist.gather_object(obj, received, dst=0)
        return received

    def broadcast_from_main(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]
