"""Meta-training over several processes with torch.distributed (gloo on CPUs, NCCL on GPUs).

Each rank owns the inner problems ``rank, rank + W, rank + 2W, ...`` of the B problems, computes
their ES and rp samples, and reduces them to per-element counts, sums and sums of squares
(:class:`harness.meta.estimators.SampleSums`, float64). One ``all_reduce(SUM)`` of that vector
gives every rank the totals over all ranks' samples, from which each rank computes the same
merged gradient (:func:`harness.meta.estimators.merge_moments`) and takes the same Adam step on
theta. Rank 0 writes the log and the checkpoints (the inner states are gathered to it).

The same code runs 2 processes on a laptop and many machines::

    # one machine, what `meta_train(cfg)` does for parallel=processes:
    python -m torch.distributed.run --standalone --nproc-per-node=2 \\
        -m harness.meta.distributed out/config.json
    # several machines: the usual torchrun rendezvous options, the same module and config file
    torchrun --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        -m harness.meta.distributed config.json

The config file is a JSON :class:`harness.settings.meta.MetaTrainConfig` (``meta_train`` writes
it to ``out/config.json``); only rank 0 needs to see the output folder.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, UsageError
from harness.meta.processes import INTERRUPTED_EXIT, run_workers, stop_signals
from harness.meta.trainer import run_meta_training
from harness.meta.world import TorchDistributedWorld, World
from harness.resolve import resolve_meta
from harness.settings.meta import coerce_config

__all__ = ["TorchDistributedWorld", "World", "in_torchrun", "init_world", "launch", "main"]


def in_torchrun() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_world(device: str) -> tuple[TorchDistributedWorld, torch.device]:
    """Join the process group torchrun describes (gloo for the CPU, NCCL for CUDA); returns the
    world and this rank's device (``cuda:LOCAL_RANK`` for CUDA)."""
    import torch.distributed as dist

    kind = torch.device(device).type
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        rank_device = torch.device("cuda", local)
    else:
        rank_device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return TorchDistributedWorld(rank_device), rank_device


def launch(
    config_path: Path, workers: int, threads: int, module: str = "harness.meta.distributed"
) -> None:
    """Run ``workers`` ranks of ``module``'s ``main`` (default :func:`main`) on this machine with
    torchrun and wait for them.

    Raises ``HarnessError`` when a rank fails (its own messages are on stderr above), and
    ``KeyboardInterrupt`` on Ctrl-C once every process of the run has exited
    (:func:`harness.meta.processes.run_workers`).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={workers}",
        "--max-restarts=0",
        "-m",
        module,
        str(config_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # Ctrl-C: every process of the run stopped, then KeyboardInterrupt (harness.meta.processes)
    returncode = run_workers(command, env)
    if returncode == 2:
        raise UsageError("meta-training workers refused their configuration (see above)")
    if returncode != 0:
        raise HarnessError(
            f"meta-training workers failed with exit code {returncode} (see above); "
            "rerun the same command to resume from the last checkpoint"
        )


def worker_main(
    argv: Sequence[str] | None, module: str, work: Callable[[dict[str, Any]], object]
) -> int:
    """A torchrun worker's entry: ``-m MODULE CONFIG.json`` -> ``work(the file's data)``
    (which joins the process group: it is left at the end). Exit 0, or 2 with the one-line
    ``UsageError`` on stderr."""
    import torch.distributed as dist

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: torchrun ... -m {module} CONFIG.json", file=sys.stderr)
        return 2
    interrupted = stop_signals()
    try:
        try:
            work(json.loads(Path(args[0]).read_text()))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except UsageError as exc:
        print(f"lopt: error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        if interrupted():  # Ctrl-C: the launcher prints the one line
            return INTERRUPTED_EXIT
        raise
    return 0


def _meta_worker(data: dict[str, Any]) -> None:
    cfg = coerce_config(data)
    world, device = init_world(cfg.device)
    torch.set_num_threads(cfg.threads or 1)
    # the one resolve step of this process (plugins, task, learner, estimator, initial theta)
    run_meta_training(resolve_meta(cfg, device=device), world, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry point: ``-m harness.meta.distributed CONFIG.json``."""
    return worker_main(argv, "harness.meta.distributed", _meta_worker)


if __name__ == "__main__":
    sys.exit(main())
