"""``meta_train(cfg) -> Path``: the entrance ``lopt meta-train`` calls.

It checks the configuration (one-line ``UsageError``s, before anything is written), prepares
the output folder (``resume=false`` removes a previous run's files; ``resume=true`` checks that
the saved run is the same run), writes ``out/config.json``, then either runs in this process
(``parallel=loop`` or ``vmap``, or one worker) or launches ``workers`` ranks with torchrun
(``parallel=processes``) and waits. It returns the path of ``out/lopt.safetensors``, which
``lopt bench ... optimizer=lopt optimizer.checkpoint=PATH`` evaluates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.errors import Interrupted, UsageError
from harness.meta.checkpoint import load_trainer_state
from harness.meta.distributed import in_torchrun, init_world, launch
from harness.meta.processes import interrupted_line
from harness.meta.trainer import (
    CONFIG_FILE,
    LOG_FILE,
    LOPT_FILE,
    STATE_FILE,
    check_identity,
    run_meta_training,
)
from harness.meta.truncation import LOSS_CLIP
from harness.meta.world import World
from harness.outputs import check_writable
from harness.registry import create_task, load_plugin_modules
from harness.settings.meta import MetaTrainConfig, coerce_config
from harness.util import write_atomically
from tasks.base import resolve_device


def meta_train(cfg: MetaTrainConfig | Any = None, **overrides: Any) -> Path:
    """Meta-train a learned optimizer as ``cfg`` says; returns the path of ``out/lopt.safetensors``.

    Args:
        cfg: a :class:`MetaTrainConfig`, a mapping or an OmegaConf node (a Hydra task group node
            ``{"name": ..., **settings}`` under ``task`` is understood).
        overrides: field values that replace those of ``cfg``.

    Raises ``UsageError`` (one line) for bad input, before anything is written.
    """
    cfg = coerce_config(cfg, **overrides)
    check_writable(cfg.out)  # before any work: a read-only or missing place fails in one line
    load_plugin_modules(cfg.plugins)
    resolve_device(cfg.device)
    # the one build of the task: unknown settings and bad values fail here, in one line, before
    # anything is written; this process's trainer trains this instance
    task = create_task(cfg.task, device=cfg.device, **cfg.task_cfg)
    out = prepare_out(cfg)
    if cfg.parallel == "processes" and cfg.workers > 1 and not in_torchrun():
        try:
            launch(out / CONFIG_FILE, cfg.workers, cfg.threads or 1)
        except KeyboardInterrupt as exc:  # every worker has exited; one line, exit 130
            raise Interrupted(interrupted_line(out / STATE_FILE)) from exc
        return out / LOPT_FILE
    previous = torch.get_num_threads()
    threads = cfg.threads or (1 if cfg.parallel == "processes" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        if in_torchrun() and cfg.parallel == "processes":
            import torch.distributed as dist

            world, device = init_world(cfg.device)
            # a rank on another device than cfg.device (cuda:LOCAL_RANK) builds its own
            same = device == torch.device(cfg.device)
            try:
                return run_meta_training(cfg, world, device=device, task=task if same else None)
            finally:
                dist.destroy_process_group()
        return run_meta_training(cfg, World(), task=task)
    finally:
        torch.set_num_threads(previous)


def summary_line(out: str | Path) -> str:
    """One line on a finished (or stopped) run in ``out``: the checkpoint, outer steps, the
    last smoothed outer loss and held-out losses, seconds and CPU-hours (read from its log)."""
    import pandas as pd

    out = Path(out)
    log = pd.read_csv(out / LOG_FILE)
    last = log.sort_values("outer_step").groupby("metric")["value"].last()
    steps = int(log["outer_step"].max())
    parts = [f"{out / LOPT_FILE}: {steps} outer steps"]
    if "outer_loss_smoothed" in last:
        parts.append(f"outer loss {last['outer_loss_smoothed']:.4g} (smoothed)")
    for split in ("train", "valid"):
        name = f"heldout_{split}_loss"
        if name in last:
            clip = " (the loss clip: its runs diverged)" if last[name] >= LOSS_CLIP else ""
            parts.append(f"held-out {split} loss {last[name]:.4g}{clip}")
    seconds = float(log.loc[log["metric"] == "seconds", "value"].sum())
    parts.append(f"{seconds:.0f} s")
    if "cpu_seconds" in last:
        parts.append(f"{last['cpu_seconds'] / 3600:.3f} CPU-hours")
    return ", ".join(parts)


def prepare_out(cfg: MetaTrainConfig) -> Path:
    """Create ``out``; with ``resume`` check a saved run is this one, else clear it; write
    ``config.json``. Returns ``out``."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is a file; meta-training writes a folder")
    state_path = out / STATE_FILE
    if state_path.is_file():
        if cfg.resume:
            check_identity(cfg, load_trainer_state(state_path))
        else:
            lopt = [out / LOPT_FILE, out / "lopt.pt", *out.glob("lopt_step*.*")]  # .pt: older runs
            for old in [state_path, out / LOG_FILE, *lopt]:
                old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomically(out / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return out
