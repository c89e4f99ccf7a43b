"""Study 3: outer training with rp only, ES only and the merge, at equal compute.

Two meta-trained optimizers (column ``optimizer``), each with every estimator and seed:

``hparam_sgd``: SGD with a learnable learning rate (theta = [log lr]) is meta-trained from
``training_init_lr`` with a constant unroll of ``training_unroll`` steps, ``training_problems``
inner problems per outer step, by :class:`harness.meta.trainer.MetaTrainer` itself (its
estimators, merge, clipping and Adam on theta), given the learner family
:class:`optimizers.learned_hparams.LearnedHParams` instead of the MLP. Every estimator runs the same
antithetic pairs (two unrolls per problem and outer step: equal inner steps; rp and the merge
also pay for the backward pass, which the seconds axis shows).

``lopt``: the paper's setting, the learned optimizer (the MLP of ``optimizers.learned``, 1,762
theta elements) meta-trained by :class:`harness.meta.trainer.MetaTrainer` unchanged, with a
constant unroll of ``training_lopt_unroll`` steps for ``training_lopt_outer_steps`` outer steps
(Adam lr ``training_lopt_lr``; same B, horizon and clip as above). Its untrained MLP barely moves
(steps of ~0.001) and, with larger steps, climbs the quadratic to the loss clip (a clipped loss
has no gradient), so neither makes rp explode; the run starts instead from
:func:`large_step_theta`: the trainer's untrained theta with a normalised-gradient path wired in
and steps ``training_lopt_step_scale`` times larger, a descending optimizer whose inner dynamics
are bounded but chaotic on the quadratic (the regime of section 2, above the stability edge).

Every ``training_eval_every`` outer steps theta is evaluated on ``training_eval_problems``
held-out inner problems (fresh initialisations and batches of another seed): the mean outer loss
of an unroll of the run's unroll length from inner step 0, without perturbation.

Rows: ``metric`` ``train_outer_loss`` (the trainer's logged outer loss of the step),
``eval_outer_loss``, ``lr`` (exp theta; ``hparam_sgd`` only), ``es_weight``, ``var_es`` and
``var_rp`` (the trainer's logged per-element sample variances, mean over elements; rp's is
NaN for ``es``, which computes no rp samples); ``step`` is the outer step and ``seconds`` the
trainer's cumulative seconds (evaluation excluded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.meta.trainer import MetaTrainer
from harness.meta.truncation import STREAM_THETA, InnerProblems, derive_seed
from harness.pathology.common import (
    SGD_ARCHITECTURE,
    log_lr_theta,
    row,
    sgd_problems,
    study_progress,
)
from harness.pathology.report import ESTIMATOR_COLOURS, ESTIMATOR_LABELS, figure, save
from harness.pathology.study import StudyBase
from harness.resolve import build_estimator
from harness.settings.meta import coerce_config
from harness.settings.pathology import ESTIMATORS, PathologyConfig
from optimizers.learned import LOptArchitecture, MLPLearner, wire_feature
from optimizers.learned_hparams import LearnedHParams
from tasks.base import Task

STUDY = "training"
EVAL_SEED_OFFSET = 1_000_003
OPTIMIZERS = ("hparam_sgd", "lopt")
#: the trainer's per-step metrics kept in the tidy table (``outer_loss`` as train_outer_loss)
LOGGED = ("outer_loss", "es_weight", "var_es", "var_rp")


def large_step_theta(
    theta: torch.Tensor, architecture: LOptArchitecture, step_scale: float
) -> torch.Tensor:
    """``theta`` (an untrained MLP) with a normalised-gradient path and ``step_scale`` x steps.

    :func:`optimizers.learned.wire_feature` on column 0 (the RMS-normalised gradient): ``d = g_hat
    + (the rest of the random network)``; the magnitude output's bias is
    ``log(step_scale) / exp_mult``, so the update is about ``step_mult * step_scale * d`` per
    element. A copy; other elements kept.
    """
    bias = math.log(step_scale) / architecture.exp_mult
    return wire_feature(theta, architecture, 0, magnitude_bias=bias)


def meta_config(cfg: PathologyConfig, estimator: str, seed: int, optimizer: str) -> Any:
    """The :class:`harness.settings.meta.MetaTrainConfig` of one run."""
    lopt = optimizer == "lopt"
    return coerce_config(
        task=cfg.task,
        task_cfg=dict(cfg.task_cfg),
        estimator=estimator,
        seed=seed,
        problems=cfg.training.problems,
        horizon=cfg.training.horizon,
        outer_batches=1,
        sigma=cfg.sigma,
        lr=cfg.training.lopt_lr if lopt else cfg.training.lr,
        schedule="constant",
        unroll_length=cfg.training.lopt_unroll if lopt else cfg.training.unroll,
        parallel="vmap",
        outer_steps=cfg.training.lopt_outer_steps if lopt else cfg.training.outer_steps,
        out="unused",
        progress=False,
    )


def evaluate(problems: Any, theta: torch.Tensor, count: int, length: int) -> float:
    """Mean outer loss of unrolls of ``length`` steps from inner step 0 of ``count`` problems."""
    states = [problems.fresh_state(i, 0) for i in range(count)]
    datas = [problems.data(i, s, length) for i, s in enumerate(states)]
    losses, _, _ = problems.unroll_batched(
        theta.unsqueeze(0).expand(count, -1), states, datas, grad_mode="none"
    )
    values = losses.double().numpy()
    return float(np.where(np.isfinite(values), values, 10.0).mean())


def run_training(cfg: PathologyConfig, task: Task) -> pd.DataFrame:
    """Both optimizers, every estimator and seed (see the module docstring)."""
    progress = study_progress(
        cfg.progress, STUDY, total=len(OPTIMIZERS) * cfg.training.seeds * len(ESTIMATORS)
    )
    rows: list[dict] = []
    for optimizer in OPTIMIZERS:
        lopt = optimizer == "lopt"
        unroll = cfg.training.lopt_unroll if lopt else cfg.training.unroll
        outer_steps = cfg.training.lopt_outer_steps if lopt else cfg.training.outer_steps
        for seed in range(cfg.seed, cfg.seed + cfg.training.seeds):
            for estimator in ESTIMATORS:
                trainer = _trainer(cfg, task, estimator, seed, optimizer)
                eval_problems = _eval_problems(cfg, task, trainer, seed, optimizer)
                common = {
                    "study": STUDY,
                    "task": task.name,
                    "optimizer": optimizer,
                    "variant": estimator,
                    "unroll_length": unroll,
                    "seed": seed,
                }
                _log_eval(rows, common, eval_problems, trainer, cfg, unroll, lopt)
                for _ in range(outer_steps):
                    metrics = trainer.step()
                    step, seconds = trainer.outer_step, trainer.seconds
                    for metric in LOGGED:
                        name = "train_outer_loss" if metric == "outer_loss" else metric
                        value = float(metrics.get(metric, math.nan))  # NaN: not computed
                        rows.append(
                            row(**common, step=step, seconds=seconds, metric=name, value=value)
                        )
                    if step % cfg.training.eval_every == 0 or step == outer_steps:
                        _log_eval(rows, common, eval_problems, trainer, cfg, unroll, lopt)
                extra = "" if lopt else f", lr {math.exp(float(trainer.theta[0])):.4g}"
                progress.update(
                    note=f"{optimizer} {estimator} seed {seed}: {outer_steps} outer steps in "
                    f"{trainer.seconds:.1f}s{extra}"
                )
    return pd.DataFrame(rows)


def _trainer(
    cfg: PathologyConfig, task: Task, estimator: str, seed: int, optimizer: str
) -> MetaTrainer:
    meta = meta_config(cfg, estimator, seed, optimizer)
    chosen = build_estimator(meta)
    if optimizer == "lopt":
        learner = MLPLearner.of()
        theta = large_step_theta(
            learner.init_theta(derive_seed(seed, STREAM_THETA)),
            learner.architecture,
            cfg.training.lopt_step_scale,
        )
        return MetaTrainer(meta, learner, chosen, task=task, initial_theta=theta)
    theta = log_lr_theta(cfg.training.init_lr)
    hparams = LearnedHParams.of(SGD_ARCHITECTURE)
    return MetaTrainer(meta, hparams, chosen, task=task, initial_theta=theta)


def _eval_problems(
    cfg: PathologyConfig, task: Task, trainer: MetaTrainer, seed: int, optimizer: str
) -> InnerProblems:
    """Held-out problems: the same for every estimator of a seed (another seed's draws)."""
    if optimizer == "hparam_sgd":
        return sgd_problems(
            task, seed=seed + EVAL_SEED_OFFSET, num_problems=cfg.training.eval_problems
        )
    return InnerProblems(
        task,
        trainer.learner,
        num_problems=cfg.training.eval_problems,
        horizon=10**9,
        outer_batches=1,
        objective="train",
        seed=seed + EVAL_SEED_OFFSET,
    )


def _log_eval(
    rows: list[dict],
    common: dict[str, Any],
    problems: Any,
    trainer: MetaTrainer,
    cfg: PathologyConfig,
    unroll: int,
    lopt: bool,
) -> None:
    """Rows ``eval_outer_loss`` (and ``lr`` for SGD) of the trainer's current theta."""
    step, seconds = trainer.outer_step, trainer.seconds
    loss = evaluate(problems, trainer.theta, cfg.training.eval_problems, unroll)
    values = [("eval_outer_loss", loss)]
    if not lopt:
        values.append(("lr", math.exp(float(trainer.theta[0]))))
    for metric, value in values:
        rows.append(row(**common, step=step, seconds=seconds, metric=metric, value=value))


def training_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and estimator: the held-out outer loss at the start and at the end (mean,
    min, max over seeds), the final lr (SGD), the median over outer steps of the logged ES
    weight, var_rp and var_es (median over seeds of each run's median), and the
    meta-training seconds."""
    out = []
    if "optimizer" not in frame:
        frame = frame.assign(optimizer="hparam_sgd")
    for optimizer in [o for o in OPTIMIZERS if o in set(frame["optimizer"])]:
        part = frame[frame["optimizer"] == optimizer]
        evals = part[part["metric"] == "eval_outer_loss"]
        last_step = evals["step"].max()
        for estimator in ESTIMATORS:
            mine = part[part["variant"] == estimator]
            ev = evals[evals["variant"] == estimator]
            final = ev[ev["step"] == last_step]["value"]
            start = ev[ev["step"] == 0]["value"]
            lr = mine[(mine["metric"] == "lr") & (mine["step"] == last_step)]["value"]
            seconds = mine.groupby("seed")["seconds"].max()
            entry: dict[str, Any] = {
                "optimizer": optimizer,
                "estimator": estimator,
                "unroll": int(mine["unroll_length"].iloc[0]),
                "outer_steps": int(last_step),
                "seeds": int(final.size),
                "eval_loss_start": float(start.mean()),
                "eval_loss_final_mean": float(final.mean()),
                "eval_loss_final_min": float(final.min()),
                "eval_loss_final_max": float(final.max()),
                "final_lr_mean": float(lr.mean()) if lr.size else math.nan,
            }
            for metric in ("es_weight", "var_rp", "var_es"):
                logged = mine[mine["metric"] == metric]
                medians = logged.groupby("seed")["value"].median()
                entry[f"{metric}_median"] = float(medians.median()) if medians.size else math.nan
            entry["seconds_mean"] = float(seconds.mean())
            out.append(entry)
    return pd.DataFrame(out)


def plot_training(frame: pd.DataFrame, path):  # type: ignore[no-untyped-def]
    """One row per optimizer: held-out outer loss against outer step and against seconds;
    the learned lr (SGD) or the logged variances (learned optimizer) against outer step."""
    optimizers = [o for o in OPTIMIZERS if o in set(frame["optimizer"])]
    fig = figure(len(optimizers), 3, width=4.6, height=3.6)
    axes = np.asarray(fig.axes).reshape(len(optimizers), 3)
    names = {"hparam_sgd": "SGD, theta = [log lr]", "lopt": "learned optimizer (MLP)"}
    for (ax_step, ax_sec, ax_third), optimizer in zip(axes, optimizers, strict=True):
        part = frame[frame["optimizer"] == optimizer]
        evals = part[part["metric"] == "eval_outer_loss"]
        unroll = int(part["unroll_length"].iloc[0])
        for estimator in ESTIMATORS:
            colour = ESTIMATOR_COLOURS[estimator]
            runs = evals[evals["variant"] == estimator].groupby("seed")
            for k, (_, run) in enumerate(runs):
                label = ESTIMATOR_LABELS[estimator] if k == 0 else None
                ax_step.plot(run["step"], run["value"], color=colour, marker="o", ms=3, label=label)
                ax_sec.plot(run["seconds"], run["value"], color=colour, marker="o", ms=3)
            mine = part[part["variant"] == estimator]
            if optimizer == "hparam_sgd":
                for _, run in mine[mine["metric"] == "lr"].groupby("seed"):
                    ax_third.plot(run["step"], run["value"], color=colour, marker="o", ms=3)
            else:
                for metric, style in (("var_rp", "-"), ("var_es", ":")):
                    for _, run in mine[mine["metric"] == metric].groupby("seed"):
                        ax_third.plot(run["step"], run["value"], color=colour, ls=style, lw=0.9)
        ax_step.set_xlabel("outer step")
        ax_sec.set_xlabel("meta-training seconds (1 thread)")
        for ax in (ax_step, ax_sec):
            ax.set_ylabel("held-out outer loss")
        ax_step.set_title(f"{names[optimizer]}, T = {unroll}: loss vs outer step")
        ax_sec.set_title("loss vs seconds (one line per seed)")
        ax_step.legend(fontsize=7)
        ax_third.set_xlabel("outer step")
        if optimizer == "hparam_sgd":
            ax_third.axhline(2.0, color="grey", ls=":", lw=0.8)
            ax_third.set_ylabel("learning rate exp(theta)")
            ax_third.set_title("the learned learning rate")
        else:
            ax_third.set_yscale("log")
            ax_third.set_ylabel("mean per-element sample variance")
            ax_third.set_title("var_rp (solid), var_es (dotted), as logged")
    return save(fig, path)


class TrainingStudy(StudyBase):
    """Study 3 under the study protocol (:mod:`harness.pathology.study`)."""

    name = STUDY
    title = "3. Outer training at equal compute: rp, ES, merged"

    def run(self, cfg: PathologyConfig, task: Task) -> pd.DataFrame:
        return run_training(cfg, task)

    def table(self, cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
        return training_table(frame)

    def plot(self, cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
        return plot_training(frame, path)


STUDY_OBJECT = TrainingStudy()
