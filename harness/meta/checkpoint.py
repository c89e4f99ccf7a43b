"""The meta-trainer's state file (``trainer_state.pt``), from which a run continues.

A ``torch.save`` file of plain data (tensors, numbers, strings, lists, dicts), written atomically
and read with ``torch.load(weights_only=True)``, which never executes code from the file; every
problem with it is a one-line :class:`~harness.errors.UsageError` that names the file and says
what to do (``resume=false`` starts the run again). Format ``lopt-harness/meta-trainer-state``:
what :meth:`harness.meta.trainer.MetaTrainer.state_dict` returns, plus provenance.

The learned-optimizer checkpoints meta-training writes (``lopt.safetensors``, snapshots) are
:mod:`optimizers.checkpoint`'s: the optimizer registry serves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.results.schema import provenance
from harness.util import write_atomically
from optimizers.checkpoint import FORMAT_VERSION, load_payload

TRAINER_FORMAT = "lopt-harness/meta-trainer-state"
RESTART = "rerun with resume=false to start this meta-training run again"


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
