"""Checkpoint files: the learned optimizer (``lopt.pt``) and the meta-trainer's state.

Both are ``torch.save`` files of plain data (tensors, numbers, strings, lists, dicts), written
atomically (:func:`harness.results.io.write_atomically`) and read with
``torch.load(weights_only=True)``, which never executes code from the file. Anything wrong with a
file (missing, corrupted, another format, a newer format version, a theta that does not fit its
architecture) is a one-line :class:`~harness.errors.UsageError`.

The learned-optimizer checkpoint (format ``lopt-harness/learned-optimizer``, version 1)::

    {
        "format": "lopt-harness/learned-optimizer", "format_version": 1,
        "theta": float32 tensor (P,),          # the MLP's weights, see optimizers.learned
        "architecture": {...},                 # LOptArchitecture.to_dict()
        "meta_training": {...},                # the MetaTrainConfig (task, task_cfg, estimator,
                                               # objective, ...), "outer_step", "seconds"
        "git_commit": "...", "harness_version": "...", "torch_version": "...",
        "created": "2026-01-01T12:00:00+00:00",
    }

``meta_training["seconds"]`` is the meta-training wall-clock time so far (seconds of outer steps,
summed over resumptions). The trainer state (format ``lopt-harness/meta-trainer-state``) is the
same kind of file with what :mod:`harness.meta.trainer` needs to resume exactly.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness._version import __version__
from harness.errors import UsageError
from harness.results.io import write_atomically
from harness.results.schema import git_commit

LOPT_FORMAT = "lopt-harness/learned-optimizer"
TRAINER_FORMAT = "lopt-harness/meta-trainer-state"
FORMAT_VERSION = 1


@dataclass
class LOptCheckpoint:
    """A loaded learned-optimizer checkpoint (see the module docstring for the file)."""

    theta: torch.Tensor
    architecture: Any  # optimizers.learned.LOptArchitecture
    meta_training: dict[str, Any]
    git_commit: str
    created: str


def save_lopt_checkpoint(
    path: str | Path,
    theta: torch.Tensor,
    architecture: Any,
    meta_training: dict[str, Any],
) -> Path:
    """Write a learned-optimizer checkpoint atomically; returns its path.

    Args:
        theta: ``(P,)`` meta-parameters (stored as float32 on the CPU).
        architecture: an :class:`optimizers.learned.LOptArchitecture`.
        meta_training: plain data describing how ``theta`` was obtained (config, task, outer
            step, seconds).
    """
    payload = {
        "format": LOPT_FORMAT,
        "format_version": FORMAT_VERSION,
        "theta": theta.detach().to(device="cpu", dtype=torch.float32).clone(),
        "architecture": architecture.to_dict(),
        "meta_training": meta_training,
        **_provenance(),
    }
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_lopt_checkpoint(path: str | Path) -> LOptCheckpoint:
    """Read and check a learned-optimizer checkpoint; every problem is a one-line UsageError."""
    from optimizers.learned import LOptArchitecture

    data = _load(path, LOPT_FORMAT, "learned-optimizer checkpoint")
    where = f"learned-optimizer checkpoint {str(path)!r}"
    try:
        architecture = LOptArchitecture.from_dict(data.get("architecture"))
    except UsageError as exc:
        raise UsageError(f"{where} is incompatible: {exc}") from exc
    theta = data.get("theta")
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point() or theta.dim() != 1:
        raise UsageError(f"{where} is corrupted: theta is not a 1-d float tensor")
    if theta.numel() != architecture.num_theta:
        raise UsageError(
            f"{where} is incompatible: theta has {theta.numel()} values, its architecture "
            f"needs {architecture.num_theta}"
        )
    if not torch.isfinite(theta).all():
        raise UsageError(f"{where} is corrupted: theta has non-finite values")
    meta = data.get("meta_training")
    return LOptCheckpoint(
        theta=theta.float(),
        architecture=architecture,
        meta_training=meta if isinstance(meta, dict) else {},
        git_commit=str(data.get("git_commit", "unknown")),
        created=str(data.get("created", "")),
    )


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the meta-trainer's state (plain data and tensors) atomically."""
    payload = {"format": TRAINER_FORMAT, "format_version": FORMAT_VERSION, **_provenance()}
    payload.update(state)
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read the meta-trainer's state (tensors on the CPU); problems are one-line UsageErrors."""
    return _load(path, TRAINER_FORMAT, "meta-training state")


def _load(path: str | Path, expected_format: str, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, unpickler errors)
        reason = _first_line(exc)
        raise UsageError(
            f"cannot read {what} {str(path)!r}: it is corrupted or not a checkpoint "
            f"({type(exc).__name__}: {reason})"
        ) from exc
    if not isinstance(data, dict) or "format" not in data:
        raise UsageError(f"{str(path)!r} is not a {what}: it has no format tag")
    if data["format"] != expected_format:
        raise UsageError(f"{str(path)!r} is not a {what}: its format is {data['format']!r}")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(
            f"{what} {str(path)!r} has format version {version!r}; this lopt-harness "
            f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade it"
        )
    return data


def _first_line(exc: BaseException) -> str:
    """The most telling line of ``exc`` (torch's weights-only refusals are paragraphs)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    telling = [line for line in lines if line.startswith("WeightsUnpickler error")]
    line = (telling or lines or [""])[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _provenance() -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "harness_version": __version__,
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
