"""The tidy results table: one row per measurement.

Columns (in this order; ``SCHEMA_VERSION`` changes whenever they do):

=================  ========================================================================
run_id             identifies one training run (task, optimizer, hparams, seed, budget)
suite              the suite (or ``bench``) that produced the run
task, optimizer    registered names
task_cfg           the task's full settings as canonical JSON (batch size, split seed, ...);
                   ``""`` in schema-1 files, which did not record them
hparams            the optimizer's full hyperparameters as canonical JSON (sorted keys)
seed               seed of the initial parameters and of the training data order
step               number of optimizer updates applied when the value was measured
wall_time_s        timed training seconds up to ``step`` (see docs/timing.md), evaluation excluded
split              ``train``, ``valid``, ``test`` (whole-split evaluations) or ``train_batch``
                   (the minibatch loss of the training step itself)
metric             ``loss``, ``accuracy``, ...
value              the measurement (NaN/inf are kept: they are what a diverged run measured)
status             how the run ended: ``completed``, ``diverged`` or ``time_limit``
budget_steps       the step budget the run was given
tags               free-form provenance as JSON (study name, trial number, ...); ``{}`` if none
harness_version,   provenance: versions, the git commit of the harness (``+dirty`` when the
schema_version,    working tree had uncommitted changes), the device (with its model name) and
git_commit,        the number of torch threads
torch_version,
device, threads
=================  ========================================================================
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from harness._version import __version__

SCHEMA_VERSION = 2

RUN_COLUMNS = ("run_id", "suite", "task", "task_cfg", "optimizer", "hparams", "seed")
MEASUREMENT_COLUMNS = ("step", "wall_time_s", "split", "metric", "value")
OUTCOME_COLUMNS = ("status", "budget_steps", "tags")
PROVENANCE_COLUMNS = (
    "harness_version",
    "schema_version",
    "git_commit",
    "torch_version",
    "device",
    "threads",
)
COLUMNS = RUN_COLUMNS + MEASUREMENT_COLUMNS + OUTCOME_COLUMNS + PROVENANCE_COLUMNS

STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_TIME_LIMIT = "time_limit"
STATUSES = (STATUS_COMPLETED, STATUS_DIVERGED, STATUS_TIME_LIMIT)

SPLIT_TRAIN_BATCH = "train_batch"


def canonical_json(data: dict[str, Any]) -> str:
    """Sorted-key compact JSON, so equal dicts give equal strings."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def definition_digest(data: dict[str, Any]) -> str:
    """The run-id hash: 10 hex digits of the SHA-256 of :func:`canonical_json` of ``data``
    (the same exactly when the dicts are equal), for bench runs and meta-training runs alike."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:10]


def provenance(device: torch.device | str) -> dict[str, Any]:
    """The provenance columns for runs on ``device`` in this process."""
    return {
        "harness_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": device_description(torch.device(device)),
        "threads": torch.get_num_threads(),
    }


def device_description(device: torch.device) -> str:
    """E.g. ``cpu (AMD EPYC 7B13)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({cpu_model()})"
    return str(device)


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The harness source tree's commit (``+dirty`` if modified), or ``unknown`` outside git.

    ``LOPT_GIT_COMMIT`` overrides it (for installs without a ``.git`` folder).
    """
    if os.environ.get("LOPT_GIT_COMMIT"):
        return os.environ["LOPT_GIT_COMMIT"]
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
