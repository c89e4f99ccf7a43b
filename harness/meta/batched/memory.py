"""Large tensors' memory kept in the heap, so a batched step does not page-fault it in anew.

glibc's ``malloc`` serves blocks above its mmap threshold (adaptive, at most 32 MiB on 64-bit
Linux) with a fresh ``mmap`` and returns them with ``munmap`` when freed, so every such
allocation touches new pages: the kernel zeroes and maps each 4 KiB page on its first write. A
batched step allocates its outputs afresh (the learner's new moments ``(B, 4, N)`` are 36 MiB
for B = 64 rows of N = 34k parameters), and those page faults made ``nominal_mlp``'s
``batched_step`` about 2.5x slower above the threshold (docs/batched-engine.md:
``benchmarks/nominal_mlp_batched_step.py --problems 1024``, with and without
``LOPT_KEEP_HEAP=0``).

:func:`keep_large_allocations` raises the mmap and trim thresholds to 1 GiB (``mallopt``): large
blocks then come from the heap and, once freed, are reused by the next step. The cost: freed
memory stays with the process (its resident size stays near its peak). Process-wide, once;
glibc on Linux only (elsewhere, or with ``LOPT_KEEP_HEAP=0``, nothing changes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: set to 0 to leave glibc's malloc settings alone
KEEP_HEAP_ENV = "LOPT_KEEP_HEAP"
#: bytes: blocks up to this size come from the heap, and this much free heap is kept
THRESHOLD = 1 << 30
#: mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

_applied: bool | None = None


def keep_large_allocations() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD` (once per process); returns
    whether they are raised (False off glibc, when ``mallopt`` refuses, or when switched off)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(KEEP_HEAP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1
    _applied = mmap_ok and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    return _applied
