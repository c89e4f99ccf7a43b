"""Meta-trained learned optimizers shipped with the harness, served by name.

Every ``optimizers/pretrained/NAME.safetensors`` (a ``lopt meta-train`` checkpoint, readable by
any safetensors loader: ``theta`` plus its record as JSON metadata; see
:mod:`optimizers.checkpoint`) is registered as the optimizer ``NAME`` (e.g.
``optimizer=lopt_mnist5k_valid``), like timm's pretrained weights: a
:class:`~optimizers.learned.LearnedOptimizer` whose checkpoint is fixed, with no hyperparameters.
``NAME.json`` beside it records its provenance: ``description`` (one line, shown by
``lopt list optimizers``), the ``command`` that produced it, and the meta-training wall-clock
(the checkpoint itself also holds its whole meta-training config and git commit). A ``NAME.pt``
(the older ``torch.save`` container) is served where no ``NAME.safetensors`` is beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.registry import OPTIMIZERS, Registry
from optimizers.checkpoint import PRETRAINED_DIR, SUFFIX, shipped_checkpoints
from optimizers.learned import LearnedOptimizer


def pretrained_class(path: Path) -> type[LearnedOptimizer]:
    """The optimizer class serving the checkpoint at ``path`` (not registered)."""
    info = _info(path)
    description = info.get("description") or f"Learned optimizer from {path.name}"
    command = info.get("command", "")
    doc = f"{description}\n\nCheckpoint: {path}" + (f"\nProduced by: {command}" if command else "")
    camel = "".join(part.capitalize() for part in path.stem.split("_"))
    return type(
        camel,
        (LearnedOptimizer,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "__qualname__": camel,
            "hparam_specs": (),
            "pretrained_checkpoint": str(path),
            "provenance": info,
        },
    )


def register_pretrained(
    folder: Path = PRETRAINED_DIR, registry: Registry = OPTIMIZERS
) -> list[str]:
    """Register every checkpoint in ``folder`` (``NAME.safetensors``, else ``NAME.pt``);
    returns the names."""
    names = []
    for name, path in shipped_checkpoints(folder).items():
        registry.register(name, source="builtin")(pretrained_class(path))
        names.append(name)
    return names


def publish(
    checkpoint: str | Path,
    name: str,
    *,
    description: str,
    command: str,
    folder: Path = PRETRAINED_DIR,
) -> Path:
    """Ship a ``lopt meta-train`` checkpoint as ``folder/NAME.safetensors`` with its ``NAME.json``.

    The sidecar records the description, the command that produced the checkpoint and, read
    from the checkpoint (which is checked to load), its meta-training config (a family run's with
    the defaults of the settings added after it ran), outer steps, meta-training wall-clock
    seconds, git commit and creation time, and, for a run that started at an earlier checkpoint
    (``init_from``), that chain (``curriculum``). Both files are written atomically; the
    checkpoint's fields are copied unchanged (from either container) into the safetensors file.
    Returns its path; the optimizer ``NAME`` serves it on the next import.
    """
    from harness.util import write_atomically
    from optimizers.checkpoint import (
        LOPT_FORMAT,
        load_lopt_checkpoint,
        load_payload,
        resolve_checkpoint,
        write_payload,
    )

    loaded = load_lopt_checkpoint(checkpoint)
    meta = dict(loaded.meta_training)
    if "family" in meta:  # a family run: settings added since it ran had their defaults
        from harness.settings.family import LATER_IDENTITY_DEFAULTS

        meta = {**LATER_IDENTITY_DEFAULTS, **meta}
    info = {
        "description": description,
        "command": command,
        "task": meta.get("task"),
        "objective": meta.get("objective"),
        "estimator": meta.get("estimator"),
        "family": loaded.family,
        "outer_steps": meta.get("outer_step"),
        "meta_training_seconds": meta.get("seconds"),
        "git_commit": loaded.git_commit,
        "created": loaded.created,
        "meta_training": meta,
    }
    curriculum = _curriculum(meta)
    if curriculum:
        info["curriculum"] = curriculum
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{SUFFIX}"
    source = resolve_checkpoint(checkpoint)
    fields = load_payload(source, LOPT_FORMAT, "learned-optimizer checkpoint", remedy="")
    write_payload(target, fields)
    write_atomically(
        target.with_suffix(".json"),
        lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n"),
    )
    return target


def _curriculum(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs before this one, newest first, where it started at an earlier checkpoint
    (``init_from``): each one's checkpoint path, outer steps, seconds and meta-training
    config, followed as far as the checkpoints are still there."""
    from optimizers.checkpoint import load_lopt_checkpoint

    chain: list[dict[str, Any]] = []
    source = meta.get("init_from")
    while source and len(chain) < 10:
        try:
            earlier = dict(load_lopt_checkpoint(source).meta_training)
        except UsageError:
            chain.append({"checkpoint": str(source), "missing": True})
            break
        chain.append(
            {
                "checkpoint": str(source),
                "outer_steps": earlier.get("outer_step"),
                "meta_training_seconds": earlier.get("seconds"),
                "meta_training": earlier,
            }
        )
        source = earlier.get("init_from")
    return chain


def _info(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


register_pretrained()
