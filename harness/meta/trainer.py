"""The meta-training loop: estimate, clip, Adam on theta; log, evaluate, checkpoint, resume.

In learned_optimization's vocabulary this is the *GradientLearner* plus its driver. It is given
the learner (:class:`optimizers.base.Learner`: what is trained) and the estimator
(:class:`harness.meta.estimators.GradientEstimator`: how its gradient is estimated) and knows
neither's kind. One outer step (:meth:`MetaTrainer.step`):

1. for each of this rank's inner problems: draw the unroll length (schedule, capped by the steps
   left), the truncation's batches and the perturbation ``n`` (all pure functions of the seed,
   the outer step and the problem), and let the estimator run its unrolls (a Python loop over
   the problems, or one ``torch.func.vmap`` over all of them);
2. reduce the samples to counts, sums and sums of squares, all-reduce them over the ranks, and
   turn them into a gradient (the estimator's :meth:`gradient`);
3. clip the gradient elementwise, take an Adam step on theta;
4. keep each problem's next state (the estimator's: reset at the horizon);
5. log one row per metric to the tidy table.

Every ``eval_every`` outer steps the current theta is run for the whole horizon on fresh seeds
(as ``lopt bench`` would; split over the ranks) and its final whole-split losses are logged
(``heldout_train_loss``, ``heldout_valid_loss``). Every ``checkpoint_every`` outer steps (and at
the end) rank 0 writes, atomically, ``trainer_state.pt`` (theta, Adam's moments, every
problem's estimator state, the outer step, the counters, the log so far),
``lopt.safetensors`` (what ``optimizer.checkpoint`` loads), a snapshot
``lopt_stepNNNNNN.safetensors`` and ``meta_log.csv``. Nothing else carries state between outer
steps (randomness is derived, not drawn from a stream), so resuming
from ``trainer_state.pt`` reproduces an uninterrupted run bit for bit with the same parallel
mode and thread count, however many times it is stopped.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.errors import Interrupted, UsageError
from harness.meta.checkpoint import CONFIG_FILE as CONFIG_FILE  # the run folder's files
from harness.meta.checkpoint import LOG_FILE as LOG_FILE
from harness.meta.checkpoint import (
    check_identity,
    read_states,
    save_run_files,
)
from harness.meta.estimators import GradientEstimator, MergeResult, PairSample, SampleSums
from harness.meta.truncation import (
    LOSS_CLIP,
    STREAM_PERTURBATION,
    STREAM_THETA,
    InnerProblems,
    derive_seed,
    schedule_from_config,
)
from harness.meta.world import World
from harness.progress import LINE_SECONDS, Progress
from harness.resolve import MetaRun, build_task, meta_identity, resolve_meta
from harness.results.schema import META
from harness.settings.meta import MetaTrainConfig
from optimizers.base import MetaLearnable
from tasks.base import Task

LOPT_FILE = "lopt.safetensors"
STATE_FILE = "trainer_state.pt"
#: the kind of run, in the message that refuses to resume a different one
WHAT = "meta-training run"


def snapshot_name(outer_step: int) -> str:
    """The file name of the snapshot after ``outer_step`` (``lopt_step000025.safetensors``)."""
    return f"lopt_step{outer_step:06d}.safetensors"


#: the random stream of the held-out evaluation seeds
STREAM_HELDOUT = 7
#: weight of the newest outer loss in the smoothed one (an exponential moving average)
SMOOTHING = 0.05

#: the metrics every estimator logs every outer step, in this order (then the estimator's own
#: ``var_<slot>`` and ``dropped_<slot>``; every ``eval_every`` steps ``heldout_<split>_loss``)
METRICS = (
    "outer_loss",
    "outer_loss_smoothed",
    "es_weight",
    "grad_norm",
    "unroll_length",
    "resets",
    "seconds",
    "cpu_seconds",
    "inner_steps",
)
#: the log's own columns (then the shared provenance and ``source``: harness.results.schema)
LOG_COLUMNS = META.own


class ThetaAdam:
    """Adam with bias correction on the flat theta (state: two moment vectors and a count).

    Not ``optimizers.adam.Adam``: that one follows ``torch.optim.Adam`` op for op (``lerp`` for
    the first moment, ``sqrt(v) / sqrt(1 - beta2**t) + eps`` as the denominator, one ``addcdiv``),
    this one writes the textbook formulas (``m * beta1 + g * (1 - beta1)``,
    ``sqrt(v / (1 - beta2**t)) + eps``). Both are Adam, but they round differently: after 20
    steps on 5000 random coordinates about 4% of theta's entries differ in the last bit (up to
    2.4e-7). Sharing one arithmetic would change every meta-training run's theta, and a run
    saved before the change would no longer resume to what an uninterrupted run gives, so the
    meta-trainer keeps its own.
    """

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

    def clipped_step(self, theta: torch.Tensor, grad: torch.Tensor, clip: float) -> torch.Tensor:
        """The new theta after one step with ``grad`` (cast to theta's dtype) clipped
        elementwise to ``[-clip, clip]``: what both meta-trainers take each outer step."""
        return self.step(theta, grad.to(theta.dtype).clamp(-clip, clip))

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m.cpu(), "v": self.v.cpu(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = state["m"].to(self.m.device)
        self.v = state["v"].to(self.v.device)
        self.count = int(state["count"])


class MetaTrainer:
    """Meta-trains ``learner`` on one task with ``estimator`` (see the module docstring).

    Args:
        cfg: a checked :class:`MetaTrainConfig` (task, objective, schedule, Adam, budget).
        learner: the learned-optimizer family to train.
        estimator: how the gradient of the smoothed outer loss is estimated.
        world: the ranks (:class:`World` for one process).
        device: this rank's device (default ``cfg.device``).
        task: the task instance (default: built from ``cfg``).
        initial_theta: theta at outer step 0 (default: ``learner.init_theta`` of a seed derived
            from ``cfg.seed``).
        identity: the learner's record, the run's identity and id when resolved already
            (:func:`harness.resolve.meta_identity`; default: computed here).
    """

    def __init__(
        self,
        cfg: MetaTrainConfig,
        learner: MetaLearnable,
        estimator: GradientEstimator,
        world: World | None = None,
        *,
        device: torch.device | str | None = None,
        task: Task | None = None,
        initial_theta: torch.Tensor | None = None,
        identity: tuple[dict[str, Any], dict[str, Any], str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.learner = learner
        self.estimator = estimator
        # computed once: every checkpoint saves these (nothing is built at a save)
        self.learner_record, self.identity, self.run_id = identity or meta_identity(cfg, learner)
        self.config = cfg.to_dict()
        self.world = world or World()
        self.device = torch.device(device if device is not None else cfg.device)
        self.task = task or build_task(cfg.task, self.device, cfg.task_cfg)
        self.horizon = cfg.horizon if cfg.horizon is not None else self.task.default_steps
        theta = initial_theta
        if theta is None:
            theta = learner.init_theta(derive_seed(cfg.seed, STREAM_THETA))
        if theta.shape != (learner.num_theta,):
            raise UsageError(
                f"initial theta has shape {tuple(theta.shape)}; the learner {learner.family} "
                f"needs ({learner.num_theta},)"
            )
        self.theta = theta.detach().clone().to(self.device)
        self.problems = InnerProblems(
            self.task,
            learner,
            num_problems=cfg.problems,
            horizon=self.horizon,
            outer_batches=cfg.outer_batches,
            objective=cfg.objective,
            seed=cfg.seed,
            loss=cfg.loss,
            outer_every=cfg.outer_every,
            outer_data=cfg.outer_data,
            outer_from=cfg.outer_from,
        )
        self.schedule = schedule_from_config(cfg, cfg.outer_steps)
        self.adam = ThetaAdam(
            learner.num_theta, cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps, self.device
        )
        self.local = self.world.local_problems(cfg.problems)
        self.states: dict[int, Any] = {
            i: estimator.initial_state(self.problems, i) for i in self.local
        }
        self.outer_step = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # summed over the ranks
        self.inner_steps = 0  # trained inner steps (both unrolls of every problem), all ranks
        self.smoothed = math.nan
        self.log: list[list[Any]] = []  # [outer_step, wall_time_s, metric, value]
        self.last: dict[str, float] = {}
        self.started_at = 0.0  # self.seconds when this call of run() started
        self.saved_step: int | None = None  # the outer step of the last checkpoint, if any

    # -- one outer step -----------------------------------------------------------------------
    def noise(self, problem: int) -> torch.Tensor:
        """The perturbation direction ``n ~ N(0, I)`` of ``problem`` at this outer step."""
        generator = torch.Generator().manual_seed(
            derive_seed(self.cfg.seed, STREAM_PERTURBATION, self.outer_step, problem)
        )
        return torch.randn(self.learner.num_theta, generator=generator).to(self.device)

    def samples(self) -> dict[int, tuple[PairSample, Any, bool]]:
        """This rank's samples at the current outer step, with each problem's next state
        (``self.states`` is not advanced)."""
        positions = {i: self.estimator.position(s) for i, s in self.states.items()}
        lengths = {
            i: min(self.schedule.length(self.outer_step, i), self.problems.length_cap(p))
            for i, p in positions.items()
        }
        datas = {i: self.problems.data(i, positions[i], lengths[i]) for i in self.local}
        noises = {i: self.noise(i) for i in self.local}
        return self.estimator.estimate(
            self.problems,
            self.theta,
            noises,
            self.states,
            datas,
            batched=self.cfg.parallel == "vmap",
        )

    def compute_gradient(self) -> tuple[MergeResult, SampleSums]:
        """Samples of this rank -> sums -> all-reduce -> gradient; advances the problems.

        Returns the gradient (the same on every rank) and the global sums.
        """
        sums = self.estimator.new_sums(self.learner.num_theta, device=self.device)
        for i, (sample, state, reset) in self.samples().items():
            self.states[i] = state
            sums.add(sample, reset)
        total = self.world.all_reduce_sum(sums.to_vector())
        merged_sums = SampleSums.from_vector(total, self.learner.num_theta, sums.slots)
        return self.estimator.gradient(merged_sums), merged_sums

    def step(self) -> dict[str, float]:
        """One outer step; returns its logged metrics."""
        start, cpu_start = time.perf_counter(), time.process_time()
        merged, sums = self.compute_gradient()
        if merged.source != "none":
            self.theta = self.adam.clipped_step(self.theta, merged.grad, self.cfg.clip)
        seconds = time.perf_counter() - start
        cpu = float(self.world.all_reduce_sum(torch.tensor([time.process_time() - cpu_start]))[0])
        self.seconds += seconds
        self.cpu_seconds += cpu
        self.outer_step += 1
        stats = sums.stats
        self.inner_steps += int(2 * stats["length_sum"])
        loss = stats["loss_sum"] / stats["loss_count"] if stats["loss_count"] else math.nan
        if math.isfinite(loss):
            previous = self.smoothed if math.isfinite(self.smoothed) else loss
            self.smoothed = (1.0 - SMOOTHING) * previous + SMOOTHING * loss
        metrics = {
            "outer_loss": loss,
            "outer_loss_smoothed": self.smoothed,
            "es_weight": merged.es_weight,
            "grad_norm": float(merged.grad.norm()),
            "unroll_length": stats["length_sum"] / max(1.0, stats["problems"]),
            "resets": stats["resets"],
            "seconds": seconds,
            "cpu_seconds": self.cpu_seconds,
            "inner_steps": float(self.inner_steps),
        }
        for slot in sums.slots:
            metrics[f"var_{slot}"] = merged.variances.get(slot, math.nan)
            metrics[f"dropped_{slot}"] = stats[f"dropped_{slot}"]
        for name, value in metrics.items():
            self.log.append([self.outer_step, self.seconds, name, float(value)])
        self.last = metrics
        return metrics

    # -- held-out evaluation ----------------------------------------------------------------------
    def heldout(self) -> dict[str, float]:
        """The current theta trained over the whole horizon on ``eval_seeds`` fresh seeds (split
        over the ranks), as ``lopt bench`` would, evaluated on the whole train and valid splits
        every tenth of the horizon: per split the mean over seeds of the final loss
        (``heldout_<split>_loss``) and of the mean over the run's evaluations after step 0
        (``heldout_<split>_loss_mean``: a run that spikes scores badly even if it ends low).
        A diverged or non-finite value counts as the clip, 10. Logged, untimed."""
        from harness.runner import run
        from optimizers.learned import opt_fn

        cfg = self.cfg
        optimizer = opt_fn(self.learner, self.theta.detach().cpu())  # the learner at this theta
        splits = ("train", "valid")
        every = max(1, self.horizon // 10)
        expected = len(range(every, self.horizon, every)) + 1  # evaluations after step 0
        totals = torch.zeros(2 * len(splits), dtype=torch.float64)
        for k in range(self.world.rank, cfg.eval_seeds, self.world.size):
            result = run(
                self.task,
                optimizer,
                steps=self.horizon,
                seed=derive_seed(cfg.seed, STREAM_HELDOUT, k),
                eval_every=every,
                eval_splits=splits,
                task_cfg=cfg.task_cfg,
                warmup_steps=0,
            )
            for j, split in enumerate(splits):
                curve = [
                    min(v, LOSS_CLIP) if math.isfinite(v) else LOSS_CLIP
                    for step, _, s, m, v in result.measurements
                    if s == split and m == "loss" and step > 0
                ]
                if result.status != "completed":  # diverged: the clip from there on
                    curve += [LOSS_CLIP] * (expected - len(curve) + 1)
                totals[j] += curve[-1]
                totals[len(splits) + j] += sum(curve) / len(curve)
        totals = self.world.all_reduce_sum(totals) / cfg.eval_seeds
        names = [f"heldout_{s}_loss" for s in splits] + [f"heldout_{s}_loss_mean" for s in splits]
        values = {name: float(v) for name, v in zip(names, totals, strict=True)}
        for name, value in values.items():
            self.log.append([self.outer_step, self.seconds, name, value])
        self.last.update(values)
        return values

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Outer steps until ``outer_steps`` (or ``max_seconds``); returns
        ``out/lopt.safetensors``."""
        cfg = self.cfg
        out = Path(cfg.out)
        progress = open_progress(self) if self.world.is_main else None
        eval_every = cfg.eval_every if cfg.eval_every is not None else cfg.checkpoint_every
        if self.outer_step == 0 and eval_every:
            self.heldout()
            if progress is not None:
                progress.show(lambda: progress_line(self))
        self.started_at = self.seconds  # max_seconds is a budget for this call (a chunk)
        try:
            while self.outer_step < cfg.outer_steps:
                self.step()
                out_of_time = False
                if cfg.max_seconds is not None:  # rank 0's clock decides for every rank
                    spent = self.seconds - self.started_at
                    out_of_time = self.world.broadcast_from_main(spent >= cfg.max_seconds)
                done = out_of_time or self.outer_step >= cfg.outer_steps
                if eval_every and (self.outer_step % eval_every == 0 or done):
                    self.heldout()
                if progress is not None:
                    progress.update(
                        line=lambda: progress_line(self),
                        postfix=lambda: progress_fields(self),
                        force=self.outer_step % cfg.checkpoint_every == 0,
                    )
                if out_of_time or self.outer_step % cfg.checkpoint_every == 0:
                    self.save()
                if out_of_time:
                    break
        except KeyboardInterrupt as exc:
            raise Interrupted(self.interrupted_message()) from exc
        finally:
            if progress is not None:
                progress.close()
        if self.outer_step % cfg.checkpoint_every != 0:
            self.save()
        return out / LOPT_FILE

    def interrupted_message(self) -> str:
        """What Ctrl-C leaves: the last checkpoint and how to resume, or that nothing is saved."""
        out, every = self.cfg.out, self.cfg.checkpoint_every
        if self.saved_step is None:
            return (
                f"nothing was saved in {out} yet (the first checkpoint comes at outer step "
                f"{every}, checkpoint_every={every}): a rerun starts from the beginning"
            )
        return (
            f"outer steps up to {self.saved_step} are saved in {out} (interrupted at "
            f"{self.outer_step}): rerun the same command to resume from outer step "
            f"{self.saved_step}"
        )

    def eta_seconds(self) -> float:
        """Meta-training seconds left until ``outer_steps`` or the end of this call's
        ``max_seconds``, whichever is first, at the mean pace so far (NaN before a step)."""
        if self.outer_step == 0:
            return math.nan
        left = (self.cfg.outer_steps - self.outer_step) * self.seconds / self.outer_step
        if self.cfg.max_seconds is not None:
            spent = self.seconds - self.started_at
            left = min(left, max(0.0, self.cfg.max_seconds - spent))
        return left

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """Everything needed to resume (on rank 0; None on the other ranks)."""
        estimator = self.estimator
        local = {i: estimator.state_to_dict(s) for i, s in self.states.items()}
        gathered = self.world.gather_to_main(local)
        if gathered is None:
            return None
        states: dict[int, Any] = {}
        for part in gathered:
            states.update(part)
        return {
            "config": self.config,
            "identity": self.identity,
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "inner_steps": self.inner_steps,
            "smoothed": self.smoothed,
            "theta": self.theta.detach().cpu(),
            "adam": self.adam.state_dict(),
            "problems": [states[i] for i in range(self.cfg.problems)],
            "log": self.log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (checked against this run's identity fields)."""
        check_identity(self.cfg.out, state, self.identity, WHAT)
        self.outer_step = int(state["outer_step"])
        self.seconds = float(state["seconds"])
        self.cpu_seconds = float(state["cpu_seconds"])
        self.inner_steps = int(state["inner_steps"])
        self.smoothed = float(state["smoothed"])
        self.theta = state["theta"].to(self.device)
        self.adam.load_state_dict(state["adam"])
        self.states = {
            i: self.estimator.state_from_dict(state["problems"][i], self.device) for i in self.local
        }
        self.log = [list(row) for row in state["log"]]
        self.saved_step = self.outer_step

    def save(self) -> None:
        """Write the trainer state, the learned optimizer, its snapshot and the log (rank 0)."""
        state = self.state_dict()
        if state is None:
            return
        meta = {
            **self.config,
            "horizon": self.horizon,
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "inner_steps": self.inner_steps,
            "run_id": self.run_id,
        }
        save_run_files(
            Path(self.cfg.out),
            {STATE_FILE: state},
            [LOPT_FILE, snapshot_name(self.outer_step)],
            self.theta,
            self.learner,
            self.learner_record,
            meta,
            self.log_frame(),
            device=self.device,
        )
        self.saved_step = self.outer_step

    def log_frame(self) -> pd.DataFrame:
        """The tidy log: one row per (outer step, metric), with the run's provenance (the whole
        configuration is in ``config.json`` and the checkpoints; ``run_id`` links them)."""
        frame = pd.DataFrame(self.log, columns=["outer_step", "wall_time_s", "metric", "value"])
        constants = {
            "run_id": self.run_id,
            "task": self.cfg.task,
            "learner": self.learner.family,
            "estimator": self.cfg.estimator,
            "objective": self.cfg.objective,
            "loss": self.cfg.loss,
            "seed": self.cfg.seed,
        }
        for column, value in constants.items():
            frame[column] = value
        return META.frame(frame[list(LOG_COLUMNS)], self.device)


def open_progress(trainer: MetaTrainer) -> Progress:
    """The run's progress display (:mod:`harness.progress`; ``progress``: None a bar on a
    terminal, else plain lines every ``checkpoint_every`` outer steps, every
    :data:`~harness.progress.LINE_SECONDS` and at the end; True a bar; False nothing)."""
    cfg = trainer.cfg
    return Progress(
        cfg.outer_steps,
        desc=f"meta-train {cfg.task} ({trainer.learner.family}, {cfg.estimator})",
        unit="step",
        initial=trainer.outer_step,
        show=cfg.progress,
        every=LINE_SECONDS,
    )


def progress_fields(trainer: MetaTrainer) -> dict[str, str]:
    """What a person needs to judge a run (the bar's postfix and the line's fields): the outer
    loss (raw and smoothed), the last held-out losses (``10(=clip:diverged)`` when they are the
    loss clip: the held-out runs diverged), the unroll length, CPU-hours, inner steps, ETA."""
    t = trainer
    last = t.last
    out = {}
    if "outer_loss" in last:
        out["loss"] = f"{last['outer_loss']:.4g}"
        out["smoothed"] = f"{t.smoothed:.4g}"
    for split in ("train", "valid"):
        value = last.get(f"heldout_{split}_loss")
        if value is not None:
            clipped = value >= LOSS_CLIP  # every held-out seed diverged or ended at the clip
            shown = f"{value:.4g}"
            out[f"heldout_{split}"] = f"{shown}(=clip:diverged)" if clipped else shown
    if "unroll_length" in last:
        out["T"] = f"{last['unroll_length']:.0f}"
    out["cpu_h"] = f"{t.cpu_seconds / 3600:.3f}"
    out["inner_steps"] = f"{t.inner_steps:,}"
    eta = t.eta_seconds()
    out["eta"] = f"{eta / 60:.1f}min" if math.isfinite(eta) else "?"
    return out


def progress_line(trainer: MetaTrainer) -> str:
    """``[meta-train 40/1000 123s] loss=... smoothed=... eta=...`` (meta-training seconds)."""
    fields = " ".join(f"{k}={v}" for k, v in progress_fields(trainer).items())
    t = trainer
    return f"[meta-train {t.outer_step}/{t.cfg.outer_steps} {t.seconds:.0f}s] {fields}"


def build_trainer(
    cfg: MetaTrainConfig | MetaRun,
    world: World | None = None,
    *,
    device: torch.device | None = None,
    task: Task | None = None,
) -> MetaTrainer:
    """The trainer of a resolved run (:func:`harness.resolve.resolve_meta`), or of settings,
    resolved here (``task`` and ``device`` as there): the learner, estimator, task and initial
    theta it names, built once."""
    run = cfg if isinstance(cfg, MetaRun) else resolve_meta(cfg, device=device, task=task)
    return MetaTrainer(
        run.cfg,
        run.learner,
        run.estimator,
        world,
        device=device,
        task=run.task,
        initial_theta=run.initial_theta,
        identity=(run.record, run.identity, run.run_id),
    )


def run_meta_training(
    cfg: MetaTrainConfig | MetaRun,
    world: World | None = None,
    *,
    device: torch.device | None = None,
    task: Task | None = None,
) -> Path:
    """Build the trainer (:func:`build_trainer`), resume from ``out/trainer_state.pt`` if it
    exists, run; returns the path of ``lopt.safetensors``. (``meta_train`` prepares ``out`` and
    the processes; this runs in each.)"""
    world = world or World()
    trainer = build_trainer(cfg, world, device=device, task=task)
    cfg = trainer.cfg
    (state,) = read_states(world, [Path(cfg.out) / STATE_FILE])
    if state is not None:
        trainer.load_state_dict(state)
        if world.is_main:
            done = trainer.outer_step >= cfg.outer_steps
            what = "is already trained" if done else "resumes from its checkpoint"
            print(
                f"meta-train: {cfg.out} {what} at outer step {trainer.outer_step} of "
                f"{cfg.outer_steps} (resume=false starts again)",
                file=sys.stderr,
                flush=True,
            )
    return trainer.run()
