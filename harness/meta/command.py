"""``meta_train(cfg) -> Path``: the entrance ``lopt meta-train`` calls.

It checks the configuration's values and resolves its names once (:mod:`harness.resolve`: the
task, learner, estimator and initial theta this process trains; one-line ``UsageError``s, before
anything is written), prepares the output folder (``resume=false`` removes a previous run's
files; ``resume=true`` checks that the saved run is the same run), writes ``out/config.json``,
then either runs in this process
(``parallel=loop`` or ``vmap``, or one worker) or launches ``workers`` ranks with torchrun
(``parallel=processes``) and waits. It returns the path of ``out/lopt.safetensors``, which
``lopt bench ... optimizer=lopt optimizer.checkpoint=PATH`` evaluates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from harness.errors import Interrupted
from harness.meta import checkpoint
from harness.meta.distributed import in_torchrun, init_world, launch
from harness.meta.processes import interrupted_line
from harness.meta.trainer import (
    CONFIG_FILE,
    LOG_FILE,
    LOPT_FILE,
    STATE_FILE,
    WHAT,
    run_meta_training,
)
from harness.meta.truncation import LOSS_CLIP
from harness.meta.world import World
from harness.outputs import check_writable
from harness.registry import create_task
from harness.resolve import MetaRun, resolve_meta
from harness.settings.meta import MetaTrainConfig, coerce_config
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
    resolve_device(cfg.device)
    # the one resolve step (plugins, task, learner, estimator, initial theta): an unknown name
    # or a bad setting fails here, in one line, before anything is written; this process's
    # trainer trains these objects
    run = resolve_meta(cfg)
    out = prepare_out(run)
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
            if device != torch.device(cfg.device):  # a rank on cuda:LOCAL_RANK: its own task
                task = create_task(cfg.task, device=device, **cfg.task_cfg)
                run = dataclasses.replace(run, task=task)
            try:
                return run_meta_training(run, world, device=device)
            finally:
                dist.destroy_process_group()
        return run_meta_training(run, World())
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


def prepare_out(run: MetaRun) -> Path:
    """Create ``out``; with ``resume`` check a saved run is this one, else clear it; write
    ``config.json``. Returns ``out``."""
    old = [STATE_FILE, LOG_FILE, LOPT_FILE, "lopt.pt", "lopt_step*.*"]  # .pt: older runs
    return checkpoint.prepare_out(run.cfg, run.identity, WHAT, STATE_FILE, old)
