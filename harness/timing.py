"""The timing layer: a stopwatch that only counts what is inside its timed sections.

The contract (docs/timing.md has the whole of it):

* Every clock read is ``time.perf_counter()`` preceded by a device synchronisation
  (``torch.cuda.synchronize`` on CUDA, ``torch.mps.synchronize`` on MPS, nothing on the CPU), so
  the time of queued GPU work lands in the section that queued it.
* ``with stopwatch.timed(): ...`` adds the section's duration to ``stopwatch.total``; time spent
  outside timed sections (data preparation, evaluation, logging, warm-up) is never counted.
* ``clock`` and ``sync`` are injectable, so tests can replace them with fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def device_sync(device: torch.device | str) -> Callable[[], None] | None:
    """The function that waits for all queued work on ``device``, or None on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return None


class Stopwatch:
    """Accumulates the wall-clock seconds spent inside :meth:`timed` sections.

    Args:
        clock: returns the current time in seconds (default ``time.perf_counter``).
        sync: called before every clock read (default: none, as on the CPU).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._sync = sync
        self.total = 0.0
        self.sections = 0

    def read(self) -> float:
        """Synchronise the device, then read the clock."""
        if self._sync is not None:
            self._sync()
        return self._clock()

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time spent in the ``with`` block (also when it raises)."""
        start = self.read()
        try:
            yield
        finally:
            self.total += self.read() - start
            self.sections += 1

    @classmethod
    def for_device(cls, device: torch.device | str) -> Stopwatch:
        """A stopwatch on ``time.perf_counter`` that synchronises ``device``."""
        return cls(sync=device_sync(device))
