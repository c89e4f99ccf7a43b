"""harness.meta.batched.memory: large blocks come from glibc's heap and are reused, so a batched
step's fresh outputs do not page-fault in (16,384 faults for each 64 MiB block otherwise)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from harness.meta.batched.memory import keep_large_allocations

BLOCK = 64 << 20  # bytes: above glibc's largest mmap threshold (32 MiB)


def _faults_of_one_block() -> int:
    """Minor page faults of allocating, writing and freeing one 64 MiB tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BLOCK, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    if not keep_large_allocations():
        pytest.skip("not glibc: mallopt is unavailable")
    assert keep_large_allocations()  # once per process, then the same answer
    for _ in range(3):  # the heap grows (glibc may grow it twice before it settles)
        _faults_of_one_block()
    faults = sorted(_faults_of_one_block() for _ in range(5))
    assert faults[2] < (BLOCK // 4096) // 20, faults  # the median: without, every one 16,384


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_it_can_be_switched_off() -> None:
    """With LOPT_KEEP_HEAP=0 nothing changes (a fresh process: the setting is process-wide)."""
    code = "from harness.meta.batched.memory import keep_large_allocations as k; print(k())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LOPT_KEEP_HEAP": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"
