"""Outputs that a restructuring must leave unchanged: a tiny ``lopt bench`` (its rows), a tiny
``lopt meta-train`` (its log's values and its checkpoint), a tiny family meta-training run (the
same) and a report built from the bench rows, all clock columns aside.

``record`` writes them as JSON (the values themselves, so a difference can be read); ``compare``
runs them again and ends in ``verdict: met: identical ...`` (exit 0) or ``verdict: MISSED:``
naming the first difference (exit 3, :mod:`verdict`; a crash exits 1). The file defaults to
``tests/data/resolve_equality.json``.
Recorded with the code before a change (``PYTHONPATH=<old checkout>``), compared with the code
after it; ``tests/test_resolve_equality.py`` compares against ``tests/data/resolve_equality.json``
(recorded at commit 708c6d5, before settings became plain data)::

    PYTHONPATH=/path/to/old OMP_NUM_THREADS=1 python benchmarks/resolve_equality.py record F.json
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/resolve_equality.py compare [F.json]

What is left out depends on the clock or the checkout: ``wall_time_s``, the ``seconds`` and
``cpu_seconds`` rows, the provenance columns (commit, version, device, threads) and the
checkpoint's ``seconds``/``cpu_seconds``. The report is built from the bench rows with their
clock columns set to a fixed function of the step, so its files are a function of the values.
About 20 s on one thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.settings.family import LATER_IDENTITY_DEFAULTS

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "data" / "resolve_equality.json"
CLOCK_METRICS = ("seconds", "cpu_seconds")
#: provenance, and ``source`` (schema 3 added it to every tidy table: which job wrote the row)
PROVENANCE = (
    "harness_version",
    "schema_version",
    "git_commit",
    "torch_version",
    "device",
    "source",
)

#: family meta-training settings added after the recording, left out at their defaults (their
#: default is the old behaviour)
LATER_FIELDS = LATER_IDENTITY_DEFAULTS
#: metrics logged since the recording: the held-out judge's standard error over its tasks
LATER_METRICS = ("heldout_loss_se",)

BENCH = ["task=quadratic", "optimizer=adam", "steps=20", "eval_every=10", "seeds=2"]
META = [
    "task=quadratic",
    "problems=4",
    "horizon=40",
    "outer_batches=2",
    "schedule=constant",
    "unroll_length=6",
    "progress=false",
    "threads=1",
    "eval_every=3",
    "eval_seeds=1",
    "outer_steps=3",
    "checkpoint_every=2",
    "parallel=loop",
]
FAMILY = [
    "family=mlp_mix",
    "learner=nominal_mlp",
    "learner_cfg.compile=false",
    "pairs=4",
    "arch_groups=2",
    "truncation=10",
    "min_horizon=20",
    "max_horizon=40",
    "heldout_tasks=4",
    "eval_every=2",
    "checkpoint_every=2",
    "parallel=single",
    "lr=0.01",
    "seed=26",
    "outer_steps=3",
    "progress=false",
]


def values(frame: pd.DataFrame, clock_columns: tuple[str, ...]) -> list[list[Any]]:
    """The frame without clock rows, metrics logged since the recording (``LATER_METRICS``) and
    clock or provenance columns, as plain rows."""
    frame = frame[~frame["metric"].isin((*CLOCK_METRICS, *LATER_METRICS))]
    keep = [c for c in frame.columns if c not in (*clock_columns, *PROVENANCE, "threads")]
    return [list(map(_plain, row)) for row in frame[keep].itertuples(index=False)]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def checkpoint(path: Path, family: bool = False) -> dict[str, Any]:
    """theta's SHA-256 and the checkpoint's fields, clock fields (and, for a ``family`` run,
    ``LATER_FIELDS`` at their defaults) aside."""
    from optimizers.checkpoint import load_payload

    payload = load_payload(path, "lopt-harness/learned-optimizer", "checkpoint", remedy="")
    theta = payload["theta"].contiguous().numpy().tobytes()
    later = LATER_FIELDS if family else {}
    meta = {
        k: v
        for k, v in payload["meta_training"].items()
        if k not in ("seconds", "cpu_seconds", "out") and later.get(k, object()) != v
    }
    return {
        "theta_sha256": hashlib.sha256(theta).hexdigest(),
        "family": payload["family"],
        "architecture": payload["architecture"],
        "meta_training": json.loads(json.dumps(meta, default=str)),
    }


def outputs(work: Path) -> dict[str, Any]:
    """Run the four tiny commands in ``work``; their outputs, clock aside."""
    import torch

    from harness.cli import main

    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    rows = work / "bench.csv"
    assert main(["bench", *BENCH, f"out={rows}"]) == 0
    bench = pd.read_csv(rows)
    result["bench_rows"] = values(bench, ("wall_time_s",))
    assert main(["meta-train", *META, f"out={work / 'meta'}"]) == 0
    result["meta_log"] = values(pd.read_csv(work / "meta" / "meta_log.csv"), ("wall_time_s",))
    result["meta_checkpoint"] = checkpoint(work / "meta" / "lopt.safetensors")
    assert main(["meta-train", *FAMILY, f"out={work / 'family'}"]) == 0
    family_log = pd.read_csv(work / "family" / "meta_log.csv")
    result["family_log"] = values(family_log, ("wall_time_s",))
    result["family_checkpoint"] = checkpoint(work / "family" / "lopt.safetensors", family=True)
    fixed = bench.copy()
    fixed["wall_time_s"] = fixed["step"] * 1e-3  # the clock as a function of the step
    for column in ("harness_version", "git_commit", "torch_version", "device"):
        fixed[column] = "fixed"
    # the report's input as recorded: schema 2 (schema 3 added ``source``; readers fill it in)
    fixed = fixed.drop(columns=["source"], errors="ignore").assign(schema_version=2)
    fixed_rows = work / "fixed.csv"
    fixed.to_csv(fixed_rows, index=False)
    assert main(["report", f"in={fixed_rows}", f"out={work / 'report'}"]) == 0
    result["report"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((work / "report").iterdir())
        if p.suffix in (".md", ".csv")
    }
    return result


#: the key of the recorded file naming the CPU model it was recorded on (``cpu_model()``)
RECORDED_ON = "recorded_on"
#: on another CPU model the float kernels round differently (measured: the largest relative
#: difference, Intel Xeon against the AMD EPYC recording, 2.6e-4, in a meta-training log), so
#: floats are compared to this relative (and absolute) tolerance and checkpoint digests skipped
CROSS_CPU_TOLERANCE = (1e-3, 1e-6)


def first_difference(
    old: Any,
    new: Any,
    where: str = "",
    tolerance: tuple[float, float] | None = None,
    skip: str | None = None,
) -> str | None:
    """Where ``old`` and ``new`` first differ (``None`` when equal). ``tolerance``: floats
    within ``(relative, absolute)`` of each other are equal (None: bit for bit); ``skip``: a
    key suffix whose values are not compared."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if skip is not None and key.endswith(skip):
                continue
            if key not in old or key not in new:
                return f"{where}/{key}: only in {'new' if key in new else 'recorded'}"
            found = first_difference(old[key], new[key], f"{where}/{key}", tolerance, skip)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return f"{where}: {len(old)} recorded entries, {len(new)} now"
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{where}[{i}]", tolerance, skip)
            if found:
                return found
        return None
    if tolerance is not None and isinstance(old, float) and isinstance(new, float):
        close = math.isclose(old, new, rel_tol=tolerance[0], abs_tol=tolerance[1])
        return None if close else f"{where}: recorded {old!r}, now {new!r}"
    return None if old == new else f"{where}: recorded {old!r}, now {new!r}"


def compare(recorded: dict[str, Any], now: dict[str, Any]) -> tuple[str | None, str]:
    """The first difference of ``now`` from ``recorded`` (None: equal), and how they were
    compared: bit for bit on the CPU model the file was recorded on; elsewhere floats within
    :data:`CROSS_CPU_TOLERANCE`, checkpoint digests skipped."""
    from harness.results.schema import cpu_model

    recorded = dict(recorded)
    on = recorded.pop(RECORDED_ON, None)
    if on == cpu_model():
        return first_difference(recorded, now), f"bit for bit on {on}"
    rel, absolute = CROSS_CPU_TOLERANCE
    found = first_difference(recorded, now, tolerance=CROSS_CPU_TOLERANCE, skip="sha256")
    how = (
        f"recorded on {on}, compared on {cpu_model()}: floats to a relative {rel:g} or an "
        f"absolute {absolute:g}, checkpoint digests skipped"
    )
    return found, how


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(json.dumps(outputs(Path(tmp))))


def main(argv: list[str] | None = None) -> int:
    from verdict import verdict

    argv = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(argv) <= 2 or argv[0] not in ("record", "compare"):
        print("usage: resolve_equality.py record|compare [FILE.json]", file=sys.stderr)
        return 2
    path = Path(argv[1]) if len(argv) == 2 else RECORDED
    now = measure()
    if argv[0] == "record":
        from harness.results.schema import cpu_model

        text = json.dumps({**now, RECORDED_ON: cpu_model()}, indent=1, sort_keys=True) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"recorded {path}")
        return 0
    found, how = compare(json.loads(path.read_text()), now)
    what = f"bench rows, meta-training and family logs and checkpoints, report vs {path.name}"
    return verdict(
        found is None, f"the same {what} ({how})" if found is None else f"differ ({how}): {found}"
    )


if __name__ == "__main__":
    sys.exit(main())
