"""The meta-trainer's state file (``trainer_state.pt``), from which a run continues.

A ``torch.save`` file of plain data (tensors, numbers, strings, lists, dicts), written atomically
and read with ``torch.load(weights_only=True)``, which never executes code from the file; every
problem with it is a one-line :class:`~harness.errors.UsageError` that names the file and says
what to do (``resume=false`` starts the run again). Format ``lopt-harness/meta-trainer-state``:
what :meth:`harness.meta.trainer.MetaTrainer.state_dict` returns, plus provenance.

The learned-optimizer checkpoints meta-training writes (``lopt.safetensors``, snapshots) are
:mod:`optimizers.checkpoint`'s: the optimizer registry serves them.

The pieces both trainers (:mod:`harness.meta.trainer`, :mod:`harness.meta.family.trainer`)
share, one definition each: the run folder's preparation (:func:`prepare_out`), the resume
identity check (:func:`check_identity`), reading the state files on rank 0
(:func:`read_states`) and writing a run's files (:func:`save_run_files`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError
from harness.results.schema import provenance
from harness.util import write_atomically
from optimizers.checkpoint import FORMAT_VERSION, load_payload

TRAINER_FORMAT = "lopt-harness/meta-trainer-state"
RESTART = "rerun with resume=false to start this meta-training run again"
LOG_FILE = "meta_log.csv"
CONFIG_FILE = "config.json"


def save_trainer_state(
    path: str | Path, state: dict[str, Any], device: torch.device | str = "cpu"
) -> Path:
    """Write the meta-trainer's state (plain data and tensors) atomically, with the provenance
    of its making on ``device`` (:func:`harness.results.schema.provenance`)."""
    payload = {
        "format": TRAINER_FORMAT,
        "format_version": FORMAT_VERSION,
        **provenance(device, created=True),
    }
    payload.update(state)
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read the meta-trainer's state (tensors on the CPU); problems are one-line UsageErrors."""
    return load_payload(path, TRAINER_FORMAT, "meta-training state", remedy=RESTART)


def check_identity(
    out: str | Path,
    state: dict[str, Any],
    mine: dict[str, Any],
    what: str,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """``UsageError`` naming the first field of ``mine`` (a run's identity) that the saved
    ``state``'s identity does not share; ``what`` names the kind of run. ``defaults``: fields
    added to the identity later, left out of it at their default (so older runs still resume):
    each is compared on both sides, a missing one read as its default."""
    defaults = defaults or {}
    saved = state.get("identity", {})
    for name in [*mine, *(n for n in defaults if n not in mine)]:
        before, value = saved.get(name, defaults.get(name)), mine.get(name, defaults.get(name))
        if before != value:
            raise UsageError(
                f"{out} holds a different {what} ({name}={before!r}, now {value!r}): "
                "use another out, or resume=false to start it again"
            )


def prepare_out(
    cfg: Any,
    identity: dict[str, Any],
    what: str,
    state_file: str,
    old_files: list[str],
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Create the run's folder ``cfg.out``; with ``cfg.resume`` check a saved run
    (``state_file``) is this one (its ``identity``; ``what`` names the kind of run), else remove
    the run's files (``old_files``, names or globs in ``out``); write ``config.json``
    (``cfg.to_dict()``, sorted keys); ``defaults``: as :func:`check_identity`. Returns ``out``."""
    given, out, resume = cfg.out, Path(cfg.out), cfg.resume
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is a file; meta-training writes a folder")
    state_path = out / state_file
    if state_path.is_file():
        if resume:
            check_identity(given, load_trainer_state(state_path), identity, what, defaults)
        else:
            for pattern in old_files:
                for old in out.glob(pattern):
                    old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomically(out / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return out


def read_states(world: Any, paths: list[Path]) -> list[dict[str, Any] | None]:
    """Each of ``paths`` read on the main rank (None where missing), broadcast to every rank."""
    states = None
    if world.is_main:
        states = [load_trainer_state(p) if p.is_file() else None for p in paths]
    return world.broadcast_from_main(states)


def save_run_files(
    out: Path,
    states: dict[str, dict[str, Any]],
    lopt_files: list[str],
    theta: torch.Tensor,
    learner: Any,
    record: dict[str, Any],
    meta: dict[str, Any],
    log: Any,
    device: Any = "cpu",
) -> None:
    """A meta-training run's files in ``out``, each atomically: the state files (name ->
    state), the learned optimizer under each of ``lopt_files`` (``theta``, the ``learner``'s
    family and ``record``, ``meta``) and the tidy ``log`` (a DataFrame) as ``meta_log.csv``;
    ``device``: where the run ran, for the state files' provenance."""
    from optimizers.checkpoint import save_lopt_checkpoint

    for name, state in states.items():
        save_trainer_state(out / name, state, device)
    for name in lopt_files:
        save_lopt_checkpoint(out / name, theta, learner, meta, record=record)
    write_atomically(out / LOG_FILE, lambda tmp: log.to_csv(tmp, index=False))
