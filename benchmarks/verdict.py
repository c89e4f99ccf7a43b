"""The exit codes of the benchmarks, so that a missed target and a crash are told apart.

* 0: the target is met (or the benchmark has no target and finished);
* :data:`MISSED` (3): it ran to the end and the target is missed; the last line says
  ``verdict: MISSED ...``;
* anything else is a failure: 1 a crash (Python's traceback), 2 bad arguments (argparse) or an
  invalid measurement.

``nox -s benchmarks`` accepts 0 and 3 only (``success_codes``); ``tests/test_benchmarks.py``
runs every benchmark the README names with a tiny budget and fails on any other code.
"""

from __future__ import annotations

#: the exit code of a benchmark that ran to the end and missed its target
MISSED = 3


def verdict(met: bool, what: str) -> int:
    """Print ``verdict: met|MISSED: <what>`` (the last line) and return the exit code."""
    print(f"verdict: {'met' if met else 'MISSED'}: {what}", flush=True)
    return 0 if met else MISSED
