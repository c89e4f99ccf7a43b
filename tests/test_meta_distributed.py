"""Multi-process meta-training: 2 gloo ranks on localhost merge to the single-process gradient;
``parallel=processes`` (torchrun) trains like ``parallel=loop``."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.meta import meta_train
from harness.meta.distributed import TorchDistributedWorld
from harness.meta.trainer import build_trainer
from harness.settings.meta import coerce_config
from optimizers.checkpoint import load_lopt_checkpoint

SETTINGS = {
    "task": "quadratic",
    "problems": 6,
    "horizon": 30,
    "outer_batches": 2,
    "schedule": "linear",
    "min_unroll": 3,
    "max_unroll": 9,
    "progress": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gradient_worker(rank: int, world_size: int, port: int, out: str, estimator: str) -> None:
    """One rank: join the gloo group, compute two outer steps' gradients (the second from the
    states the first left), rank 0 saves the last."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        cfg = coerce_config(
            SETTINGS, parallel="processes", workers=world_size, out=out, estimator=estimator
        )
        world = TorchDistributedWorld(torch.device("cpu"))
        trainer = build_trainer(cfg, world)
        assert trainer.local == list(range(rank, cfg.problems, world_size))
        trainer.step()
        merged, sums = trainer.compute_gradient()
        if rank == 0:
            torch.save(
                {"grad": merged.grad, "vector": sums.to_vector(), "es_weight": merged.es_weight},
                Path(out) / "rank0.pt",
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["merged", "pes"])
def test_two_ranks_merge_to_the_single_process_gradient(tmp_path: Path, estimator: str) -> None:
    """Two gloo ranks, each with half the problems, all-reduce their sums; the gradient equals
    the one a single process computes from the same samples (same seed, same problems), at the
    second outer step too (the states each rank carried, PES's two trajectories included)."""
    args = (2, free_port(), str(tmp_path), estimator)
    mp.spawn(gradient_worker, args=args, nprocs=2, join=True)
    distributed = torch.load(tmp_path / "rank0.pt", weights_only=True)

    torch.set_num_threads(1)
    cfg = coerce_config(
        SETTINGS, parallel="loop", out=str(tmp_path / "single"), estimator=estimator
    )
    single = build_trainer(cfg)
    single.step()
    merged, sums = single.compute_gradient()
    torch.testing.assert_close(distributed["vector"], sums.to_vector(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(distributed["grad"], merged.grad, rtol=1e-9, atol=1e-12)
    assert abs(distributed["es_weight"] - merged.es_weight) < 1e-9
    assert merged.source == {"merged": "merged", "pes": "pes"}[estimator]
    assert float(merged.grad.abs().max()) > 0


@pytest.mark.slow
def test_processes_mode_trains_like_the_loop(tmp_path: Path) -> None:
    """meta_train(parallel=processes, workers=2) launches 2 torchrun ranks (gloo); after 3
    outer steps theta and the logged losses match parallel=loop."""
    processes = meta_train(
        SETTINGS, parallel="processes", workers=2, outer_steps=3, out=str(tmp_path / "p")
    )
    loop = meta_train(SETTINGS, parallel="loop", threads=1, outer_steps=3, out=str(tmp_path / "l"))
    torch.testing.assert_close(
        load_lopt_checkpoint(processes).theta,
        load_lopt_checkpoint(loop).theta,
        rtol=1e-5,
        atol=1e-7,
    )
    logs = [pd.read_csv(Path(p).parent / "meta_log.csv") for p in (processes, loop)]
    losses = [log[log.metric == "outer_loss"].value.to_numpy() for log in logs]
    assert len(losses[0]) == 3
    assert abs(losses[0] - losses[1]).max() < 1e-5
    assert (Path(processes).parent / "trainer_state.pt").is_file()
