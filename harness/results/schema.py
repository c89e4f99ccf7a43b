"""The one tidy-table schema: every table the harness writes has one row per measurement.

Four tables, one schema (:class:`TidySchema`): each has its own columns (what a row is about),
then the shared tail, the same in all four and in this order: the provenance columns
(:func:`provenance`) and ``source``, which says where the row comes from (``bench``: a
benchmark run, ``lopt bench``/``suite``/``tune``; ``meta``: a meta-training log
``meta_log.csv``; ``pathology``: a table of ``lopt pathology``). Every table has a ``metric``
and a ``value`` column. ``SCHEMA_VERSION`` changes whenever a column does (3 added ``source``;
files of versions 1 and 2 still read: :func:`harness.results.io.read_results` fills it in).

:data:`BENCH`, the results table (``lopt bench``, suites, tuning), columns in this order:

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
source             ``bench``
=================  ========================================================================

:data:`META` (``meta_log.csv`` of ``lopt meta-train``; the columns are described in
:mod:`harness.meta.trainer`), :data:`FAMILY_META` (``meta_log.csv`` of ``lopt meta-train
family=...``) and :data:`PATHOLOGY` (``lopt pathology``'s ``NAME.csv``, described in
:mod:`harness.pathology.common`) have their own columns, then the same tail.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness._version import __version__

SCHEMA_VERSION = 3

SOURCE = "source"
SOURCE_BENCH = "bench"
SOURCE_META = "meta"
SOURCE_PATHOLOGY = "pathology"
SOURCES = (SOURCE_BENCH, SOURCE_META, SOURCE_PATHOLOGY)

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
#: the columns every tidy table ends with, in this order
SHARED_COLUMNS = (*PROVENANCE_COLUMNS, SOURCE)


@dataclass(frozen=True)
class TidySchema:
    """One tidy table: its ``own`` columns, then :data:`SHARED_COLUMNS`.

    Attributes:
        name: what the table is (shown in errors).
        source: the value of its ``source`` column (one of :data:`SOURCES`).
        own: its own columns, in order (they include ``metric`` and ``value``).
    """

    name: str
    source: str
    own: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column, in the order they are written."""
        return (*self.own, *SHARED_COLUMNS)

    def frame(self, rows: pd.DataFrame, device: torch.device | str = "cpu") -> pd.DataFrame:
        """``rows`` (holding every one of :attr:`own`) with the shared columns filled in for
        this process on ``device``, as the table is written: :attr:`columns` in order.
        A ``ValueError`` names the columns ``rows`` lacks or has beyond :attr:`own` (a writer
        that does not follow its schema)."""
        missing = [c for c in self.own if c not in rows.columns]
        extra = [c for c in rows.columns if c not in self.own]
        if missing or extra:
            raise ValueError(
                f"the {self.name} table's rows lack {missing} / have unknown columns {extra}"
            )
        frame = rows.copy()
        for column, value in {**provenance(device), SOURCE: self.source}.items():
            frame[column] = value
        return frame[list(self.columns)]


#: the results table of benchmark runs (``lopt bench``, suites, tuning)
BENCH = TidySchema("results", SOURCE_BENCH, (*RUN_COLUMNS, *MEASUREMENT_COLUMNS, *OUTCOME_COLUMNS))
#: the log of a meta-training run (``meta_log.csv``; see :mod:`harness.meta.trainer`)
META = TidySchema(
    "meta-training log",
    SOURCE_META,
    (
        "run_id",
        "task",
        "learner",
        "estimator",
        "objective",
        "loss",
        "seed",
        "outer_step",
        "wall_time_s",
        "metric",
        "value",
    ),
)
#: the log of a family meta-training run (``meta_log.csv``; see harness.meta.family.trainer)
FAMILY_META = TidySchema(
    "family meta-training log",
    SOURCE_META,
    (
        "run_id",
        "family",
        "learner",
        "estimator",
        "seed",
        "outer_step",
        "wall_time_s",
        "metric",
        "value",
    ),
)
#: a table of the pathology study (``NAME.csv``; see :mod:`harness.pathology.common`)
PATHOLOGY = TidySchema(
    "pathology study",
    SOURCE_PATHOLOGY,
    (
        "study",
        "task",
        "optimizer",
        "variant",
        "unroll_length",
        "x",
        "step",
        "seconds",
        "metric",
        "value",
        "seed",
        "study_seconds",
    ),
)
SCHEMAS = (BENCH, META, FAMILY_META, PATHOLOGY)

#: the columns of the results table (:data:`BENCH`)
COLUMNS = BENCH.columns


def with_source(frame: pd.DataFrame, schema: TidySchema) -> pd.DataFrame:
    """A table read from a file written before schema 3 (no ``source`` column) with its
    ``source`` filled in as ``schema``'s, after the provenance columns; other frames as they
    are (the same object)."""
    if SOURCE in frame.columns:
        return frame
    frame = frame.copy()
    frame[SOURCE] = schema.source
    return frame


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


def provenance(device: torch.device | str = "cpu", *, created: bool = False) -> dict[str, Any]:
    """The one provenance record: what made a row or a file in this process, on ``device``.

    Keys (:data:`PROVENANCE_COLUMNS`, in order): ``harness_version``, ``schema_version``,
    ``git_commit`` (:func:`git_commit`), ``torch_version``, ``device``
    (:func:`device_description`) and ``threads`` (torch's); with ``created``, also ``created``:
    the time now (UTC, ISO 8601, whole seconds). Every tidy table carries the record as columns;
    every checkpoint and trainer state as fields, with ``created``.
    """
    record: dict[str, Any] = {
        "harness_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "git_commit": git_commit(),
        "torch_version": str(torch.__version__),
        "device": device_description(torch.device(device)),
        "threads": torch.get_num_threads(),
    }
    if created:
        now = datetime.datetime.now(datetime.UTC)
        record["created"] = now.isoformat(timespec="seconds")
    return record


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
