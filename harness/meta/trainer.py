"""The meta-training loop: estimate, merge, clip, Adam on theta; log, checkpoint, resume.

In learned_optimization's vocabulary this is the *GradientLearner* plus its driver. One outer
step (:meth:`MetaTrainer.step`):

1. for each of this rank's inner problems: draw the unroll length (schedule, capped by the steps
   left), the truncation's batches and the perturbation ``n`` (all pure functions of the seed,
   the outer step and the problem), and run the antithetic pair of unrolls (a Python loop over
   the problems, or one ``torch.func.vmap`` over all of them);
2. reduce the samples to counts, sums and sums of squares, all-reduce them over the ranks, and
   merge (:func:`harness.meta.estimators.merge_moments`);
3. clip the gradient elementwise, take an Adam step on theta;
4. carry each problem's +eps final state to the next truncation (reset at the horizon);
5. log one row per metric to the tidy table.

Every ``checkpoint_every`` outer steps (and at the end) rank 0 writes, atomically,
``trainer_state.pt`` (theta, Adam's moments, every inner state, the outer step, the log so far),
``lopt.pt`` (the learned optimizer, what ``optimizer.checkpoint`` loads), a snapshot
``lopt_stepNNNNNN.pt`` and ``meta_log.csv``. Nothing else carries state between outer steps
(randomness is derived, not drawn from a stream), so resuming from ``trainer_state.pt``
reproduces an uninterrupted run bit for bit with the same parallel mode and thread count.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.errors import UsageError
from harness.meta.checkpoint import (
    load_trainer_state,
    save_lopt_checkpoint,
    save_trainer_state,
)
from harness.meta.config import MetaTrainConfig
from harness.meta.distributed import World
from harness.meta.estimators import (
    MergeResult,
    PairSample,
    SampleSums,
    antithetic_pair,
    antithetic_pairs_batched,
    merge_moments,
)
from harness.meta.truncation import (
    STREAM_PERTURBATION,
    STREAM_THETA,
    InnerProblems,
    InnerState,
    derive_seed,
    schedule_from_config,
)
from harness.registry import create_task
from harness.results.io import write_atomically
from harness.results.schema import canonical_json, provenance
from optimizers.learned import LearnedOptimizer, init_theta
from tasks.base import Task

LOPT_FILE = "lopt.pt"
STATE_FILE = "trainer_state.pt"
LOG_FILE = "meta_log.csv"
CONFIG_FILE = "config.json"

#: the metrics logged every outer step, in this order
METRICS = (
    "outer_loss",
    "es_weight",
    "var_es",
    "var_rp",
    "grad_norm",
    "dropped_es",
    "dropped_rp",
    "unroll_length",
    "resets",
    "seconds",
)
LOG_COLUMNS = (
    "run_id",
    "task",
    "estimator",
    "objective",
    "seed",
    "outer_step",
    "wall_time_s",
    "metric",
    "value",
)


def run_id(cfg: MetaTrainConfig) -> str:
    """``meta-<task>-<estimator>-<objective>-s<seed>-<hash of the identity fields>``."""
    digest = hashlib.sha256(canonical_json(cfg.identity()).encode()).hexdigest()[:10]
    return f"meta-{cfg.task}-{cfg.estimator}-{cfg.objective}-s{cfg.seed}-{digest}"


class ThetaAdam:
    """Adam with bias correction on the flat theta (state: two moment vectors and a count)."""

    def __init__(
        self, size: int, lr: float, beta1: float, beta2: float, eps: float, device: torch.device
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = torch.zeros(size, device=device)
        self.v = torch.zeros(size, device=device)
        self.count = 0

    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The new theta after one step with gradient ``grad``."""
        self.count += 1
        self.m = self.m * self.beta1 + grad * (1.0 - self.beta1)
        self.v = self.v * self.beta2 + grad * grad * (1.0 - self.beta2)
        m_hat = self.m / (1.0 - self.beta1**self.count)
        v_hat = self.v / (1.0 - self.beta2**self.count)
        return theta - self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m.cpu(), "v": self.v.cpu(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = state["m"].to(self.m.device)
        self.v = state["v"].to(self.v.device)
        self.count = int(state["count"])


class MetaTrainer:
    """Meta-trains a learned optimizer on one task (see the module docstring).

    Args:
        cfg: a checked :class:`MetaTrainConfig`.
        world: the ranks (:class:`World` for one process).
        device: this rank's device (default ``cfg.device``).
        task: the task instance (default: built from ``cfg``).
    """

    def __init__(
        self,
        cfg: MetaTrainConfig,
        world: World | None = None,
        *,
        device: torch.device | str | None = None,
        task: Task | None = None,
    ) -> None:
        self.cfg = cfg
        self.world = world or World()
        self.device = torch.device(device if device is not None else cfg.device)
        self.task = task or create_task(cfg.task, device=self.device, **cfg.task_cfg)
        self.architecture = cfg.architecture()
        self.horizon = cfg.horizon if cfg.horizon is not None else self.task.default_steps
        self.theta = init_theta(self.architecture, derive_seed(cfg.seed, STREAM_THETA)).to(
            self.device
        )
        self.lopt = LearnedOptimizer.from_theta(self.theta, self.architecture)
        self.problems = InnerProblems(
            self.task,
            self.lopt,
            num_problems=cfg.problems,
            horizon=self.horizon,
            outer_batches=cfg.outer_batches,
            objective=cfg.objective,
            seed=cfg.seed,
        )
        self.schedule = schedule_from_config(cfg, cfg.outer_steps)
        self.adam = ThetaAdam(
            self.architecture.num_theta, cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps, self.device
        )
        self.local = self.world.local_problems(cfg.problems)
        self.states: dict[int, InnerState] = {i: self.problems.initial_state(i) for i in self.local}
        self.outer_step = 0
        self.seconds = 0.0
        self.log: list[list[Any]] = []  # [outer_step, wall_time_s, metric, value]
        self.last: dict[str, float] = {}

    # -- one outer step -----------------------------------------------------------------------
    def noise(self, problem: int) -> torch.Tensor:
        """The perturbation direction ``n ~ N(0, I)`` of ``problem`` at this outer step."""
        generator = torch.Generator().manual_seed(
            derive_seed(self.cfg.seed, STREAM_PERTURBATION, self.outer_step, problem)
        )
        return torch.randn(self.architecture.num_theta, generator=generator).to(self.device)

    def samples(self) -> dict[int, PairSample]:
        """This rank's antithetic pairs at the current outer step (states are not advanced)."""
        cfg = self.cfg
        rp = cfg.estimator != "es"
        lengths = {
            i: min(self.schedule.length(self.outer_step, i), self.problems.length_cap(s))
            for i, s in self.states.items()
        }
        datas = {i: self.problems.data(i, self.states[i], lengths[i]) for i in self.local}
        if cfg.parallel == "vmap":
            pairs = antithetic_pairs_batched(
                self.problems,
                self.theta,
                torch.stack([self.noise(i) for i in self.local]),
                cfg.sigma,
                [self.states[i] for i in self.local],
                [datas[i] for i in self.local],
                rp=rp,
                first_order=cfg.first_order,
            )
            return dict(zip(self.local, pairs, strict=True))
        return {
            i: antithetic_pair(
                self.problems,
                self.theta,
                self.noise(i),
                cfg.sigma,
                self.states[i],
                datas[i],
                rp=rp,
                first_order=cfg.first_order,
            )
            for i in self.local
        }

    def compute_gradient(self) -> tuple[MergeResult, SampleSums]:
        """Samples of this rank -> sums -> all-reduce -> merge; advances the inner states.

        Returns the merged gradient (the same on every rank) and the global sums.
        """
        sums = SampleSums(self.architecture.num_theta, device=self.device)
        for i, sample in self.samples().items():
            self.states[i], reset = self.problems.advance(i, sample.final)
            sums.add(sample, reset)
        total = self.world.all_reduce_sum(sums.to_vector())
        merged_sums = SampleSums.from_vector(total, self.architecture.num_theta)
        return merge_moments(merged_sums, self.cfg.estimator), merged_sums

    def step(self) -> dict[str, float]:
        """One outer step; returns its logged metrics."""
        start = time.perf_counter()
        merged, sums = self.compute_gradient()
        grad = merged.grad.to(self.theta.dtype)
        if merged.source != "none":
            clipped = grad.clamp(-self.cfg.clip, self.cfg.clip)
            self.theta = self.adam.step(self.theta, clipped)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.outer_step += 1
        stats = sums.stats
        metrics = {
            "outer_loss": stats["loss_sum"] / stats["loss_count"]
            if stats["loss_count"]
            else math.nan,
            "es_weight": merged.es_weight,
            "var_es": merged.var_es,
            "var_rp": merged.var_rp,
            "grad_norm": float(merged.grad.norm()),
            "dropped_es": stats["dropped_es"],
            "dropped_rp": stats["dropped_rp"],
            "unroll_length": stats["length_sum"] / max(1.0, stats["problems"]),
            "resets": stats["resets"],
            "seconds": seconds,
        }
        for name in METRICS:
            self.log.append([self.outer_step, self.seconds, name, float(metrics[name])])
        self.last = metrics
        return metrics

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Outer steps until ``outer_steps`` (or ``max_seconds``); returns ``out/lopt.pt``."""
        cfg = self.cfg
        out = Path(cfg.out)
        bar = self._progress_bar()
        try:
            while self.outer_step < cfg.outer_steps:
                metrics = self.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{metrics['outer_loss']:.4g}",
                        es_w=f"{metrics['es_weight']:.2f}",
                        T=f"{metrics['unroll_length']:.0f}",
                        refresh=False,
                    )
                out_of_time = False
                if cfg.max_seconds is not None:  # rank 0's clock decides for every rank
                    out_of_time = self.world.broadcast_from_main(self.seconds >= cfg.max_seconds)
                if out_of_time or self.outer_step % cfg.checkpoint_every == 0:
                    self.save()
                if out_of_time:
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.outer_step % cfg.checkpoint_every != 0:
            self.save()
        return out / LOPT_FILE

    def _progress_bar(self) -> Any:
        if not self.world.is_main:
            return None
        from tqdm import tqdm

        show = self.cfg.progress if self.cfg.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        return tqdm(
            total=self.cfg.outer_steps,
            initial=self.outer_step,
            desc=f"meta-train {self.cfg.task} ({self.cfg.estimator})",
            unit="step",
            file=sys.stderr,
        )

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """Everything needed to resume (on rank 0; None on the other ranks)."""
        gathered = self.world.gather_to_main({i: s.to_dict() for i, s in self.states.items()})
        if gathered is None:
            return None
        states: dict[int, Any] = {}
        for part in gathered:
            states.update(part)
        return {
            "config": self.cfg.to_dict(),
            "identity": self.cfg.identity(),
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "theta": self.theta.detach().cpu(),
            "adam": self.adam.state_dict(),
            "problems": [states[i] for i in range(self.cfg.problems)],
            "log": self.log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (checked against this run's identity fields)."""
        check_identity(self.cfg, state)
        self.outer_step = int(state["outer_step"])
        self.seconds = float(state["seconds"])
        self.theta = state["theta"].to(self.device)
        self.adam.load_state_dict(state["adam"])
        self.states = {
            i: InnerState.from_dict(state["problems"][i], self.device) for i in self.local
        }
        self.log = [list(row) for row in state["log"]]

    def save(self) -> None:
        """Write the trainer state, the learned optimizer, its snapshot and the log (rank 0)."""
        state = self.state_dict()
        if state is None:
            return
        out = Path(self.cfg.out)
        save_trainer_state(out / STATE_FILE, state)
        meta = {
            **self.cfg.to_dict(),
            "horizon": self.horizon,
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "run_id": run_id(self.cfg),
        }
        save_lopt_checkpoint(out / LOPT_FILE, self.theta, self.architecture, meta)
        save_lopt_checkpoint(
            out / f"lopt_step{self.outer_step:06d}.pt", self.theta, self.architecture, meta
        )
        frame = self.log_frame()
        write_atomically(out / LOG_FILE, lambda tmp: frame.to_csv(tmp, index=False))

    def log_frame(self) -> pd.DataFrame:
        """The tidy log: one row per (outer step, metric), with the run's provenance (the whole
        configuration is in ``config.json`` and the checkpoints; ``run_id`` links them)."""
        frame = pd.DataFrame(self.log, columns=["outer_step", "wall_time_s", "metric", "value"])
        constants = {
            "run_id": run_id(self.cfg),
            "task": self.cfg.task,
            "estimator": self.cfg.estimator,
            "objective": self.cfg.objective,
            "seed": self.cfg.seed,
            **provenance(self.device),
        }
        for column, value in constants.items():
            frame[column] = value
        return frame[[*LOG_COLUMNS, *provenance(self.device)]]


def check_identity(cfg: MetaTrainConfig, state: dict[str, Any]) -> None:
    """``UsageError`` naming the first identity field where ``cfg`` and the saved run differ."""
    saved = state.get("identity", {})
    mine = cfg.identity()
    for name, value in mine.items():
        if saved.get(name) != value:
            raise UsageError(
                f"{cfg.out} holds a different meta-training run ({name}={saved.get(name)!r}, "
                f"now {value!r}): use another out, or resume=false to start it again"
            )


def run_meta_training(
    cfg: MetaTrainConfig, world: World | None = None, *, device: torch.device | None = None
) -> Path:
    """Build the trainer, resume from ``out/trainer_state.pt`` if it exists, run; returns the
    path of ``lopt.pt``. (``meta_train`` prepares ``out`` and the processes; this runs in each.)"""
    world = world or World()
    trainer = MetaTrainer(cfg, world, device=device)
    path = Path(cfg.out) / STATE_FILE
    state = None
    if world.is_main and path.is_file():
        state = load_trainer_state(path)
    state = world.broadcast_from_main(state)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run()
