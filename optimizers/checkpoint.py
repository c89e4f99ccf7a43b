"""Learned-optimizer checkpoints: ``theta`` plus the learner family and settings it belongs to.

A checkpoint is a safetensors file (``NAME.safetensors``, https://huggingface.co/docs/safetensors,
what ``lopt meta-train`` and :func:`publish` write): the one tensor ``theta`` and, in the file's
string metadata, ``format``, ``format_version`` and ``record``, the JSON of every other field
below. Any safetensors reader loads it without this package::

    from safetensors import safe_open
    with safe_open("lopt_mnist5k_train.safetensors", "pt") as f:
        theta, record = f.get_tensor("theta"), json.loads(f.metadata()["record"])

Files written before (``NAME.pt``: a ``torch.save`` of the same fields) still load, read with
``torch.load(weights_only=True)``, which never executes code from the file; a ``.pt`` path that
no longer exists resolves to the ``.safetensors`` beside it (:func:`resolve_checkpoint`), so
commands naming the old files keep working. Both containers are written atomically. Anything
wrong with a file (missing, corrupted, another format, a newer format version, an unknown
family, a theta that does not fit its learner) is a one-line
:class:`~harness.errors.UsageError` that says what the file is and what to do.

Format ``lopt-harness/learned-optimizer``, version 2::

    {
        "format": "lopt-harness/learned-optimizer", "format_version": 2,
        "family": "mlp",                       # the registered learner family
        "theta": float32 tensor (P,),          # the family's meta-parameters
        "architecture": {...},                 # the family's settings: learner.record()
        "meta_training": {...},                # the MetaTrainConfig, "outer_step", "seconds"
        "harness_version": "...", "schema_version": 3, "git_commit": "...",
        "torch_version": "...", "device": "cpu (...)", "threads": 1,
        "created": "2026-01-01T12:00:00+00:00",
    }

The provenance fields are the one record of :func:`harness.results.schema.provenance` (the
columns of every tidy table) with ``created``; files written before carry ``git_commit``,
``harness_version``, ``torch_version`` and ``created`` only, and read the same.

Version 1 files (before families) have no ``family``: they are the paper's ``mlp``.

Wherever a checkpoint is accepted (``optimizer.checkpoint=...``, ``LOpt(..., checkpoint=...)``,
Python) a shipped name such as ``lopt_mnist5k_train`` works as well as a path
(:func:`resolve_checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from harness._version import __version__
from harness.errors import UnknownNameError, UsageError
from harness.results.schema import provenance
from harness.util import write_atomically

LOPT_FORMAT = "lopt-harness/learned-optimizer"
FORMAT_VERSION = 2
#: the family of version-1 checkpoints, which did not record one
LEGACY_FAMILY = "mlp"
#: the folder of the shipped checkpoints (served by name, see optimizers.pretrained)
PRETRAINED_DIR = Path(__file__).with_name("pretrained")
#: the container new checkpoints are written in; ``LEGACY_SUFFIX`` files still load
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"


@dataclass(frozen=True)
class LOptCheckpoint:
    """A loaded learned-optimizer checkpoint (see the module docstring for the file).

    Attributes:
        learner: the :class:`optimizers.base.MetaLearnable` it was trained for.
        theta: ``(P,)`` float32 meta-parameters.
    """

    learner: Any
    theta: torch.Tensor
    meta_training: dict[str, Any]
    git_commit: str
    created: str

    @property
    def family(self) -> str:
        return str(self.learner.family)


def shipped_checkpoints(folder: Path = PRETRAINED_DIR) -> dict[str, Path]:
    """The shipped checkpoints by name: ``folder/NAME.safetensors``, else ``folder/NAME.pt``."""
    found: dict[str, Path] = {}
    for suffix in (LEGACY_SUFFIX, SUFFIX):  # the safetensors file wins
        for path in sorted(folder.glob(f"*{suffix}")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def shipped_names() -> list[str]:
    """The names of the shipped checkpoints (``optimizers/pretrained/NAME.safetensors``)."""
    return list(shipped_checkpoints())


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The file a checkpoint argument names: an existing path, else (for a ``.pt`` path that is
    gone) the ``.safetensors`` file beside it, else a shipped name.

    Raises ``UsageError`` naming the shipped checkpoints when it is none of them.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == LEGACY_SUFFIX and path.with_suffix(SUFFIX).is_file():
        return path.with_suffix(SUFFIX)
    shipped = shipped_checkpoints().get(str(name_or_path))
    if "/" not in str(name_or_path) and shipped is not None:
        return shipped
    raise UsageError(
        f"learned-optimizer checkpoint {str(name_or_path)!r} does not exist; give a file "
        f"written by `lopt meta-train` or a shipped name: {', '.join(shipped_names()) or 'none'}"
    )


def save_lopt_checkpoint(
    path: str | Path,
    theta: torch.Tensor,
    learner: Any,
    meta_training: dict[str, Any],
    *,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write a learned-optimizer checkpoint atomically; returns its path.

    A ``path`` ending in ``.safetensors`` (what the harness writes) gets a safetensors file,
    any other a ``torch.save`` file (the older container, kept for files that must be read by
    older versions of this package).

    Args:
        theta: ``(P,)`` meta-parameters (stored as float32 on the CPU).
        learner: the :class:`optimizers.base.MetaLearnable` (its ``family`` and ``record()``).
        meta_training: plain data describing how ``theta`` was obtained (config, task, outer
            step, seconds).
        record: ``learner.record()`` when the caller has it already (a meta-trainer computes
            it once per run); None: asked of the learner.
    """
    payload = {
        "format": LOPT_FORMAT,
        "format_version": FORMAT_VERSION,
        "family": learner.family,
        "theta": theta.detach().to(device="cpu", dtype=torch.float32).clone(),
        "architecture": learner.record() if record is None else record,
        "meta_training": meta_training,
        **provenance(theta.device, created=True),
    }
    return write_payload(path, payload)


def convert_to_safetensors(path: str | Path) -> Path:
    """Write the ``.safetensors`` file beside a ``.pt`` checkpoint, with the same fields (theta
    bit for bit, the record unchanged); returns its path. An existing ``.safetensors`` file is
    never overwritten (a one-line ``UsageError``)."""
    source = Path(path)
    target = source.with_suffix(SUFFIX)
    if target.exists():
        raise UsageError(f"{str(target)!r} exists already; remove it to convert {str(source)!r}")
    fields = load_payload(source, LOPT_FORMAT, "learned-optimizer checkpoint", remedy="")
    return write_payload(target, fields)


def write_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint's fields (``theta`` and plain data) atomically, as safetensors when
    ``path`` ends in ``.safetensors`` (``theta`` the tensor, the rest the JSON ``record``),
    else with ``torch.save``; returns the path."""
    if Path(path).suffix != SUFFIX:
        return write_atomically(path, lambda tmp: torch.save(payload, tmp))
    theta = payload["theta"].detach().to(device="cpu", dtype=torch.float32).contiguous()
    record = {key: value for key, value in payload.items() if key != "theta"}
    metadata = {
        "format": str(record.pop("format")),
        "format_version": str(record.pop("format_version")),
        "record": json.dumps(record, sort_keys=True),
    }
    return write_atomically(path, lambda tmp: save_file({"theta": theta}, tmp, metadata=metadata))


def read_safetensors(path: Path) -> dict[str, Any]:
    """The fields of a safetensors checkpoint, as :func:`write_payload` stored them (raises
    ``ValueError``, ``OSError`` or ``SafetensorError`` on a file that is not one)."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    if "format" not in metadata:
        return dict(tensors)
    record = json.loads(metadata.get("record", "{}"))
    if not isinstance(record, dict):
        raise ValueError("its record is not a JSON object")
    version = metadata.get("format_version", "")
    return {
        **record,
        **tensors,
        "format": metadata["format"],
        "format_version": int(version) if version.isdigit() else version,
    }


def load_lopt_checkpoint(name_or_path: str | Path) -> LOptCheckpoint:
    """Read and check a learned-optimizer checkpoint (a path or a shipped name)."""
    from harness.registry import create_learner

    path = resolve_checkpoint(name_or_path)
    what = "learned-optimizer checkpoint"
    data = load_payload(path, LOPT_FORMAT, what, remedy="write it again with `lopt meta-train`")
    where = f"{what} {str(path)!r}"
    family = data.get("family", LEGACY_FAMILY) if data["format_version"] >= 2 else LEGACY_FAMILY
    settings = data.get("architecture")
    if not isinstance(settings, dict):
        raise UsageError(f"{where} is corrupted: its architecture is not a mapping")
    try:
        learner = create_learner(str(family), **settings)
    except UnknownNameError as exc:
        raise UsageError(f"{where} needs the learner family {family!r}: {exc}") from exc
    except UsageError as exc:
        raise UsageError(f"{where} is incompatible: {exc}") from exc
    theta = data.get("theta")
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point() or theta.dim() != 1:
        raise UsageError(f"{where} is corrupted: theta is not a 1-d float tensor")
    if theta.numel() != learner.num_theta:
        raise UsageError(
            f"{where} is incompatible: theta has {theta.numel()} values, its learner "
            f"({family}) needs {learner.num_theta}"
        )
    if not torch.isfinite(theta).all():
        raise UsageError(f"{where} is corrupted: theta has non-finite values")
    meta = data.get("meta_training")
    return LOptCheckpoint(
        learner=learner,
        theta=theta.float(),
        meta_training=meta if isinstance(meta, dict) else {},
        git_commit=str(data.get("git_commit", "unknown")),
        created=str(data.get("created", "")),
    )


def load_payload(path: str | Path, expected_format: str, what: str, remedy: str) -> dict[str, Any]:
    """The checked plain data of a checkpoint file of ``expected_format``; every problem is a
    one-line ``UsageError`` naming the file, what it should be and ``remedy`` (what to do)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        if path.suffix == SUFFIX:
            data = read_safetensors(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, unpickler errors)
        if isinstance(exc, SafetensorError | ValueError) and path.suffix == SUFFIX:
            kind = type(exc).__name__
            reason = f"it is truncated, corrupted or not a safetensors checkpoint ({kind})"
        elif "Unsupported global" in str(exc):  # a pickled class or function
            reason = (
                "it holds Python objects besides tensors and plain data "
                "(refused: loading them could run code)"
            )
        else:
            reason = f"it is truncated, corrupted or not a checkpoint ({type(exc).__name__})"
        raise UsageError(f"{what} {str(path)!r} cannot be read: {reason}; {remedy}") from exc
    if not isinstance(data, dict) or "format" not in data:
        raise UsageError(f"{str(path)!r} is not a {what}: it has no format tag; {remedy}")
    if data["format"] != expected_format:
        raise UsageError(
            f"{str(path)!r} is not a {what}: its format is {data['format']!r}; {remedy}"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(
            f"{what} {str(path)!r} has format version {version!r}; this lopt-harness "
            f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade it"
        )
    return data
