"""Settings as plain data and one resolve step changed no output: a tiny bench, meta-training
run, family run and report give what they gave before (``tests/data/resolve_equality.json``,
recorded at commit 708c6d5 with ``benchmarks/resolve_equality.py record``), clock columns aside.
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
    assert resolve_equality.first_difference(json.loads(RECORDED.read_text()), now) is None
