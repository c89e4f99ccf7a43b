"""Settings as plain data and one resolve step changed no output: a tiny bench, meta-training
run, family run and report give what they gave before (``tests/data/resolve_equality.json``,
recorded at commit 708c6d5 with ``benchmarks/resolve_equality.py record``, on an AMD EPYC),
clock columns aside: bit for bit on the CPU model it was recorded on, to rounding elsewhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "resolve_equality.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_outputs_equal_those_recorded_before_the_resolve_step(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("resolve_equality", None)
    import resolve_equality

    now = json.loads(json.dumps(resolve_equality.outputs(tmp_path)))
    found, how = resolve_equality.compare(json.loads(RECORDED.read_text()), now)
    assert found is None, how


def test_another_cpu_compares_floats_to_a_tolerance_and_the_same_cpu_bit_for_bit(monkeypatch):
    """The recording's CPU model decides: bit for bit on it, floats within the cross-CPU
    tolerance and checkpoint digests skipped elsewhere; a change beyond rounding is caught."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("resolve_equality", None)
    import resolve_equality

    from harness.results.schema import cpu_model

    recorded = {"log": [1.0, 0.001378], "ckpt": {"theta_sha256": "aa"}}
    rounded = {"log": [1.0 + 2e-7, 0.0013784], "ckpt": {"theta_sha256": "bb"}}
    elsewhere = {**recorded, resolve_equality.RECORDED_ON: "another CPU"}
    assert resolve_equality.compare(elsewhere, rounded)[0] is None
    changed = {**rounded, "log": [1.01, 0.0013784]}
    assert resolve_equality.compare(elsewhere, changed)[0] == "/log[0]: recorded 1.0, now 1.01"
    here = {**recorded, resolve_equality.RECORDED_ON: cpu_model()}
    assert resolve_equality.compare(here, rounded)[0] is not None
