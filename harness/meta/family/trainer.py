"""The family meta-training loop: pairs -> samples -> sums -> all-reduce -> meters, Adam on
theta; held-out judge, tidy log, progress lines, chunks that resume.

One outer step (:meth:`FamilyTrainer.step`): every pair this rank owns (``rank, rank + W, ...``)
draws its direction ``n`` (a pure function of seed, outer step and pair), runs one truncation
of both rows on the batched engine, and gives one sample (the estimator's); the samples and
their controls enter a :class:`SampleSums` by half (:mod:`harness.meta.family.meters`), one
``all_reduce`` sums them over the ranks, and every rank takes the same clipped Adam step
(:class:`harness.meta.trainer.ThetaAdam`) with their mean. Every ``eval_every`` outer steps (and
at the start and end of each chunk) theta is judged on the held-out set
(:mod:`harness.meta.family.heldout`).

Files in ``out`` (written atomically by rank 0 every ``checkpoint_every`` outer steps and at the
end of a chunk): ``family_state.pt`` (theta, Adam's moments, the outer step, the counters, the
log: a few hundred kB, small enough to commit), ``inner_state.pt`` (every pair's two
trajectories: what an exact resume needs, too large to commit), ``lopt.safetensors`` (the learned
optimizer, served by ``optimizer=lopt optimizer.checkpoint=PATH``), ``best.safetensors`` (theta
at the lowest ``heldout_loss`` so far, ``heldout_final_valid`` for ``objective=valid``, written
when a judgement improves on it: the judge's snapshot, whose ``meta_training`` record names its
outer step and ``selected_on``; a run resumed from a state older than this file counts its
log's judgements) and ``meta_log.csv`` (tidy: one row per outer step and metric). Resuming with
both state files repeats nothing and gives what one uninterrupted run gives; with
``family_state.pt`` alone (a committed run continued on another machine) the pairs start afresh,
staggered, and the run says so.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.meta.checkpoint import check_identity, read_states, save_run_files
from harness.meta.estimators import SampleSums
from harness.meta.family import meters
from harness.meta.family.estimators import create_family_estimator
from harness.meta.family.heldout import HeldOutSet
from harness.meta.family.pairs import PairSchedule, PairState, fresh_pairs, stagger
from harness.meta.trainer import LOG_FILE as LOG_FILE  # the run folder's log
from harness.meta.trainer import LOPT_FILE, ThetaAdam
from harness.meta.truncation import STREAM_PERTURBATION, STREAM_THETA, derive_seed
from harness.meta.world import World
from harness.progress import Progress
from harness.resolve import FamilyRun, resolve_family
from harness.results.schema import FAMILY_META
from harness.settings.family import LATER_IDENTITY_DEFAULTS, FamilyMetaTrainConfig
from optimizers.checkpoint import save_lopt_checkpoint

STATE_FILE = "family_state.pt"
INNER_FILE = "inner_state.pt"
#: theta at the lowest held-out meta-loss judged so far
BEST_FILE = "best.safetensors"
#: the log's own columns (then the shared provenance and ``source``: harness.results.schema)
LOG_COLUMNS = FAMILY_META.own
#: the kind of run, in the message that refuses to resume a different one
WHAT = "family meta-training run"


class FamilyTrainer:
    """Meta-trains ``cfg.learner`` on ``cfg.family`` (module docstring).

    Args:
        cfg: a resolved run (:func:`harness.resolve.resolve_family`), or checked settings,
            resolved here.
        world: the ranks (:class:`World` for one process).
        log_stream: where progress lines go (rank 0; default stderr).
    """

    def __init__(
        self,
        cfg: FamilyMetaTrainConfig | FamilyRun,
        world: World | None = None,
        log_stream: Any = None,
    ) -> None:
        run = cfg if isinstance(cfg, FamilyRun) else resolve_family(cfg)
        cfg = run.cfg
        self.cfg = cfg
        self.world = world or World()
        self.stream = log_stream if log_stream is not None else sys.stderr
        self.learner = run.learner
        # computed once: every checkpoint saves these (nothing is built at a save)
        self.learner_record, self.identity = run.record, run.identity
        self.run_id = run.run_id
        self.config = cfg.to_dict()
        self.estimator = create_family_estimator(cfg.estimator, cfg.sigma)
        self.schedule = PairSchedule(
            cfg.family,
            cfg.seed,
            cfg.truncation,
            cfg.min_horizon,
            cfg.max_horizon,
            arch_groups=cfg.arch_groups or None,
            objective=cfg.objective,
            loss_floor=cfg.loss_floor,
        )
        self.heldout_set = HeldOutSet(self.schedule, cfg.heldout_tasks)
        self.num_theta = int(self.learner.num_theta)
        theta = self.learner.init_theta(derive_seed(cfg.seed, STREAM_THETA))
        self.theta = theta.detach().clone().float()
        self.adam = ThetaAdam(
            self.num_theta, cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps, torch.device("cpu")
        )
        self.local = self.world.local_problems(cfg.pairs)
        self.pairs: list[PairState] = []
        self.outer_step = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.problem_steps = 0  # inner steps of every row (both sides), all ranks
        self.log: list[list[Any]] = []  # [outer_step, wall_time_s, metric, value]
        self.meter_rows: list[dict[str, float]] = []
        self.last: dict[str, float] = {}
        #: the lowest ``heldout_loss`` judged so far and its outer step (``best.safetensors``)
        self.best: dict[str, float] | None = None
        self.started_at = 0.0
        self.progress = Progress(cfg.outer_steps, show=False)  # run() opens the shown one

    # -- pairs ----------------------------------------------------------------------------------
    def start_pairs(self) -> None:
        """This rank's pairs, new and staggered with the current theta."""
        new = fresh_pairs(
            self.schedule,
            self.learner,
            [(p, 0) for p in self.local],
            self.num_theta,
            self.estimator.two_trajectories,
        )
        with torch.no_grad():
            self.pairs = stagger(self.schedule, self.learner, self.theta, new)

    def noises(self) -> torch.Tensor:
        """The directions ``[P_local, D]`` of this rank's pairs at this outer step."""
        rows = []
        for p in self.local:
            seed = derive_seed(self.cfg.seed, STREAM_PERTURBATION, self.outer_step, p)
            rows.append(torch.randn(self.num_theta, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)

    # -- one outer step -------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One outer step; returns its logged metrics."""
        cfg = self.cfg
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            samples, result, self.pairs, resets = self.estimator.step(
                self.schedule, self.learner, self.theta, self.noises(), self.pairs, self.outer_step
            )
        samples, estimator_metrics = self.estimator.combine(samples, self.world)
        sums = meters.new_sums(self.num_theta)
        for j, p in enumerate(self.local):
            control = meters.control_direction(samples[j], cfg.seed, self.outer_step, p)
            meters.add_sample(sums, p, samples[j], control)
        sums.stats["loss_sum"] = float((result.loss_plus + result.loss_minus).sum() / 2)
        sums.stats["loss_count"] = float(len(self.local))
        sums.stats["resets"] = float(sum(resets))
        sums.stats["problems"] = float(len(self.local))
        total = self.world.all_reduce_sum(sums.to_vector())
        merged = SampleSums.from_vector(total, self.num_theta, meters.METER_SLOTS)
        grad = meters.gradient(merged)
        if grad is not None:
            self.theta = self.adam.clipped_step(self.theta, grad, cfg.clip)
        seconds = time.perf_counter() - start
        cpu = float(self.world.all_reduce_sum(torch.tensor([time.process_time() - cpu_start]))[0])
        self.seconds += seconds
        self.cpu_seconds += cpu
        self.outer_step += 1
        stats = merged.stats
        self.problem_steps += int(2 * cfg.truncation * stats["problems"])
        step_meters = meters.meters(merged)
        self.meter_rows.append(step_meters)
        metrics = {
            "outer_loss": stats["loss_sum"] / max(1.0, stats["loss_count"]),
            "grad_norm": float(grad.norm()) if grad is not None else math.nan,
            **step_meters,
            **estimator_metrics,
            "resets": stats["resets"],
            "dropped": stats["dropped_half_a"] + stats["dropped_half_b"],
            "seconds": seconds,
            "cpu_seconds": self.cpu_seconds,
            "problem_steps": float(self.problem_steps),
        }
        self.record(metrics)
        return metrics

    def record(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.log.append([self.outer_step, self.seconds, name, float(value)])
        self.last.update(metrics)

    def heldout(self) -> dict[str, float]:
        """Judge the current theta on the held-out set (logged, untimed); a judgement below
        every earlier one, on :attr:`selected_on`, writes ``best.safetensors`` (rank 0)."""
        values = self.heldout_set.evaluate(self.learner, self.theta, self.world)
        self.record(values)
        name = self.selected_on
        loss = values[name]
        if math.isfinite(loss) and (self.best is None or loss < self.best[name]):
            self.best = {name: loss, "outer_step": float(self.outer_step)}
            if self.world.is_main:
                save_lopt_checkpoint(
                    Path(self.cfg.out) / BEST_FILE,
                    self.theta,
                    self.learner,
                    {**self.meta(), "selected_on": name, name: loss},
                    record=self.learner_record,
                )
        return values

    @property
    def selected_on(self) -> str:
        """The judge's metric that picks ``best.safetensors``: the held-out meta-loss for the
        train objective, the held-out tasks' final validation loss for ``objective=valid``."""
        return "heldout_loss" if self.cfg.objective == "train" else "heldout_final_valid"

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Outer steps until ``outer_steps`` or this chunk's ``max_seconds``; returns
        ``out/lopt.safetensors``."""
        cfg = self.cfg
        self.progress = self.open_progress()
        if not self.pairs and self.outer_step < cfg.outer_steps:
            self.progress.write(
                f"[meta-train {cfg.family} {cfg.estimator}] starting {cfg.pairs} pairs, "
                "each advanced with theta to its staggered first step"
            )
            self.start_pairs()
        if cfg.eval_every and not any(
            r[2] == "heldout_loss" and r[0] == self.outer_step for r in self.log
        ):
            self.heldout()
            self.show()
        self.started_at = self.seconds
        while self.outer_step < cfg.outer_steps:
            self.step()
            out_of_time = False
            if cfg.max_seconds is not None:  # rank 0's clock decides for every rank
                spent = self.seconds - self.started_at
                out_of_time = self.world.broadcast_from_main(spent >= cfg.max_seconds)
            done = out_of_time or self.outer_step >= cfg.outer_steps
            if cfg.eval_every and (self.outer_step % cfg.eval_every == 0 or done):
                self.heldout()
            checkpoint = self.outer_step % cfg.checkpoint_every == 0 or done
            self.progress.update(
                line=self.progress_line, postfix=self.progress_text, force=checkpoint
            )
            if checkpoint:
                self.save()
            if out_of_time:
                break
        self.progress.close()
        return Path(cfg.out) / LOPT_FILE

    # -- progress ---------------------------------------------------------------------------------
    def open_progress(self) -> Progress:
        """The run's progress display on rank 0 (:mod:`harness.progress`; ``progress``: a bar
        on a terminal, else a line every ``checkpoint_every`` outer steps, every
        :data:`~harness.progress.LINE_SECONDS` and at the end; False: nothing)."""
        cfg = self.cfg
        return Progress(
            cfg.outer_steps,
            desc=f"meta-train {cfg.family} ({cfg.learner}, {cfg.estimator})",
            unit="step",
            initial=self.outer_step,
            show=None if cfg.progress and self.world.is_main else False,
            stream=self.stream,
        )

    def progress_text(self) -> str:
        """``outer_loss=... heldout=... median cos=... ...`` and, when the median split-half
        cosine says so, ``-- THE ESTIMATE IS NOISE ...`` (:func:`meters.verdict`)."""
        last = self.last
        median = meters.medians(self.meter_rows)
        parts = []
        if "outer_loss" in last:
            parts.append(f"outer_loss={last['outer_loss']:.4g}")
        if "heldout_loss" in last:
            parts.append(f"heldout_loss={last['heldout_loss']:.4g}")
            parts.append(f"heldout_final_valid={last['heldout_final_valid']:.4g}")
        if self.meter_rows:
            parts.append(
                f"median cos={median['split_cosine']:.3f} (control "
                f"{median['control_split_cosine']:.3f}) snr={median['snr']:.3f} (control "
                f"{median['control_snr']:.3f})"
            )
        parts.append(f"cpu_h={self.cpu_seconds / 3600:.3f}")
        parts.append(f"problem_steps={self.problem_steps:,}")
        words = meters.verdict(median)
        text = " ".join(parts)
        return f"{text} -- {words}" if words else text

    def progress_line(self) -> str:
        """``[meta-train mlp_mix 40/1000 123s] outer_loss=... heldout=... cos=... ...``."""
        cfg = self.cfg
        head = f"[meta-train {cfg.family} {cfg.estimator} {self.outer_step}/{cfg.outer_steps}"
        return f"{head} {self.seconds:.0f}s] {self.progress_text()}"

    def show(self) -> None:
        """A progress line now (``lines`` mode)."""
        self.progress.show(self.progress_line)

    # -- state ------------------------------------------------------------------------------------
    def small_state(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "identity": self.identity,
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "problem_steps": self.problem_steps,
            "theta": self.theta.detach().cpu(),
            "adam": self.adam.state_dict(),
            "log": self.log,
            "best": self.best,
            "meter_rows": [[r[n] for n in meters.METER_NAMES] for r in self.meter_rows],
        }

    def save(self) -> None:
        """Write both state files, ``lopt.safetensors`` and the log (rank 0; the pairs gathered)."""
        gathered = self.world.gather_to_main([p.to_dict() for p in self.pairs])
        if gathered is None:
            return
        pairs = sorted((p for part in gathered for p in part), key=lambda p: p["pair"])
        meta = self.meta()
        states = {
            INNER_FILE: {"outer_step": self.outer_step, "pairs": pairs},
            STATE_FILE: self.small_state(),
        }
        save_run_files(
            Path(self.cfg.out),
            states,
            [LOPT_FILE],
            self.theta,
            self.learner,
            self.learner_record,
            meta,
            self.log_frame(),
        )

    def meta(self) -> dict[str, Any]:
        """How the current theta was obtained: the settings, the outer step and the counters
        (a checkpoint's ``meta_training`` record)."""
        return {
            **self.config,
            "outer_step": self.outer_step,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "problem_steps": self.problem_steps,
            "run_id": self.run_id,
        }

    def load(self, small: dict[str, Any], inner: dict[str, Any] | None) -> None:
        """Continue from :meth:`small_state` (and the pairs, when ``inner`` is the same outer
        step's; otherwise the pairs start afresh, staggered, with the loaded theta)."""
        check_identity(self.cfg.out, small, self.identity, WHAT, LATER_IDENTITY_DEFAULTS)
        self.outer_step = int(small["outer_step"])
        self.seconds = float(small["seconds"])
        self.cpu_seconds = float(small["cpu_seconds"])
        self.problem_steps = int(small["problem_steps"])
        self.theta = small["theta"].float()
        self.adam.load_state_dict(small["adam"])
        self.log = [list(row) for row in small["log"]]
        self.best = small.get("best")
        if self.best is None:  # a state from before best.safetensors: its log's lowest
            judged = [r for r in self.log if r[2] == self.selected_on and math.isfinite(r[3])]
            if judged:  # written again only by a judgement that beats it
                low = min(judged, key=lambda r: r[3])
                self.best = {self.selected_on: float(low[3]), "outer_step": float(low[0])}
        self.meter_rows = [
            dict(zip(meters.METER_NAMES, r, strict=True)) for r in small["meter_rows"]
        ]
        if inner is not None and int(inner["outer_step"]) == self.outer_step:
            mine = set(self.local)
            self.pairs = [PairState.from_dict(p) for p in inner["pairs"] if p["pair"] in mine]
        else:
            if self.world.is_main:
                print(
                    f"{self.cfg.out}: no inner state of outer step {self.outer_step}; the pairs "
                    "start afresh (staggered) with the saved theta",
                    file=self.stream,
                    flush=True,
                )
            self.pairs = []  # run() starts them

    def log_frame(self) -> pd.DataFrame:
        """The tidy log with the run's provenance."""
        frame = pd.DataFrame(self.log, columns=["outer_step", "wall_time_s", "metric", "value"])
        constants = {
            "run_id": self.run_id,
            "family": self.cfg.family,
            "learner": self.cfg.learner,
            "estimator": self.cfg.estimator,
            "seed": self.cfg.seed,
        }
        for column, value in constants.items():
            frame[column] = value
        return FAMILY_META.frame(frame[list(LOG_COLUMNS)], "cpu")


def run_family_training(
    cfg: FamilyMetaTrainConfig | FamilyRun, world: World | None = None, log_stream: Any = None
) -> Path:
    """Build the trainer (of a resolved run, or of settings resolved here), resume from
    ``out`` when it holds this run, run one chunk."""
    world = world or World()
    trainer = FamilyTrainer(cfg, world, log_stream)
    out = Path(trainer.cfg.out)
    small, inner = read_states(world, [out / STATE_FILE, out / INNER_FILE])
    if small is not None:
        trainer.load(small, inner)
    return trainer.run()
