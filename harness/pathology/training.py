"""Study 3: outer training with rp only, ES only and the merge, at equal compute.

SGD with a learnable learning rate (theta = [log lr]) is meta-trained from
``training_init_lr`` with a constant unroll of ``training_unroll`` steps, ``training_problems``
inner problems per outer step, by :class:`harness.meta.trainer.MetaTrainer` itself (its
estimators, merge, clipping and Adam on theta): :class:`HParamTrainer` only swaps the learned
optimizer for :class:`optimizers.learned_hparams.LearnedHParams`. Every estimator runs the same
antithetic pairs (two unrolls per problem and outer step: equal inner steps; rp and the merge
also pay for the backward pass, which the seconds axis shows).

Every ``training_eval_every`` outer steps theta is evaluated on ``training_eval_problems``
held-out inner problems (fresh initialisations and batches of another seed): the mean outer loss
of an unroll of ``training_unroll`` steps from inner step 0, without perturbation.

Rows: ``metric`` ``train_outer_loss`` (the trainer's logged outer loss of the step),
``eval_outer_loss``, ``lr`` (exp theta), ``es_weight``; ``step`` is the outer step and
``seconds`` the trainer's cumulative seconds (evaluation excluded).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.meta.config import coerce_config
from harness.meta.trainer import MetaTrainer, ThetaAdam
from harness.pathology.common import (
    SGD_ARCHITECTURE,
    Progress,
    log_lr_theta,
    row,
    sgd_problems,
)
from harness.pathology.config import ESTIMATORS, PathologyConfig
from harness.pathology.report import ESTIMATOR_COLOURS, ESTIMATOR_LABELS, figure, save
from optimizers.learned_hparams import HParamArchitecture, LearnedHParams
from tasks.base import Task

STUDY = "training"
EVAL_SEED_OFFSET = 1_000_003


class HParamTrainer(MetaTrainer):
    """:class:`MetaTrainer` driving a :class:`LearnedHParams` optimizer instead of the MLP.

    Only the optimizer, theta, Adam's state and the inner states (whose accumulators have the
    new optimizer's shape) are replaced after the base class is built; the outer step is the
    base class's. Checkpoints (``run``/``save``) are not supported: use :meth:`step`.
    """

    def __init__(
        self, cfg: Any, theta: torch.Tensor, architecture: HParamArchitecture, task: Task
    ) -> None:
        super().__init__(cfg, task=task)
        self.lopt = LearnedHParams(theta, architecture)  # type: ignore[assignment]
        self.architecture = architecture
        self.theta = theta.detach().clone().to(self.device)
        self.problems.lopt = self.lopt  # type: ignore[assignment]
        self.adam = ThetaAdam(
            architecture.num_theta, cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps, self.device
        )
        self.states = {i: self.problems.initial_state(i) for i in self.local}

    def save(self) -> None:  # pragma: no cover - not used by the study
        raise NotImplementedError("HParamTrainer does not write checkpoints")


def meta_config(cfg: PathologyConfig, estimator: str, seed: int) -> Any:
    """The :class:`harness.meta.config.MetaTrainConfig` of one run."""
    return coerce_config(
        task=cfg.task,
        task_cfg=dict(cfg.task_cfg),
        estimator=estimator,
        seed=seed,
        problems=cfg.training_problems,
        horizon=cfg.training_horizon,
        outer_batches=1,
        sigma=cfg.sigma,
        lr=cfg.training_lr,
        schedule="constant",
        unroll_length=cfg.training_unroll,
        parallel="vmap",
        outer_steps=cfg.training_outer_steps,
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
    """Every estimator and seed (see the module docstring)."""
    progress = Progress(cfg.progress, STUDY)
    rows: list[dict] = []
    theta0 = log_lr_theta(cfg.training_init_lr)
    for seed in range(cfg.seed, cfg.seed + cfg.training_seeds):
        eval_problems = sgd_problems(
            task, seed=seed + EVAL_SEED_OFFSET, num_problems=cfg.training_eval_problems
        )
        for estimator in ESTIMATORS:
            trainer = HParamTrainer(
                meta_config(cfg, estimator, seed), theta0, SGD_ARCHITECTURE, task
            )
            common = {
                "study": STUDY,
                "task": task.name,
                "optimizer": "hparam_sgd",
                "variant": estimator,
                "unroll_length": cfg.training_unroll,
                "seed": seed,
            }

            _log_eval(rows, common, eval_problems, trainer, cfg, 0, 0.0)
            for _ in range(cfg.training_outer_steps):
                metrics = trainer.step()
                step, seconds = trainer.outer_step, trainer.seconds
                for metric in ("outer_loss", "es_weight"):
                    name = "train_outer_loss" if metric == "outer_loss" else metric
                    value = float(metrics[metric])
                    rows.append(row(**common, step=step, seconds=seconds, metric=name, value=value))
                if step % cfg.training_eval_every == 0 or step == cfg.training_outer_steps:
                    _log_eval(rows, common, eval_problems, trainer, cfg, step, seconds)
            progress(
                f"{estimator} seed {seed}: {cfg.training_outer_steps} outer steps in "
                f"{trainer.seconds:.1f}s, lr {math.exp(float(trainer.theta[0])):.4g}"
            )
    return pd.DataFrame(rows)


def _log_eval(
    rows: list[dict],
    common: dict[str, Any],
    problems: Any,
    trainer: HParamTrainer,
    cfg: PathologyConfig,
    step: int,
    seconds: float,
) -> None:
    """Rows ``eval_outer_loss`` and ``lr`` of the trainer's current theta."""
    loss = evaluate(problems, trainer.theta, cfg.training_eval_problems, cfg.training_unroll)
    lr = math.exp(float(trainer.theta[0]))
    for metric, value in (("eval_outer_loss", loss), ("lr", lr)):
        rows.append(row(**common, step=step, seconds=seconds, metric=metric, value=value))


def training_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per estimator: the final held-out outer loss and lr (mean, min, max over seeds), and
    the meta-training seconds."""
    out = []
    evals = frame[frame["metric"] == "eval_outer_loss"]
    lrs = frame[frame["metric"] == "lr"]
    last_step = evals["step"].max()
    for estimator in ESTIMATORS:
        final = evals[(evals["variant"] == estimator) & (evals["step"] == last_step)]["value"]
        start = evals[(evals["variant"] == estimator) & (evals["step"] == 0)]["value"]
        lr = lrs[(lrs["variant"] == estimator) & (lrs["step"] == last_step)]["value"]
        seconds = frame[frame["variant"] == estimator].groupby("seed")["seconds"].max()
        out.append(
            {
                "estimator": estimator,
                "seeds": int(final.size),
                "eval_loss_start": float(start.mean()),
                "eval_loss_final_mean": float(final.mean()),
                "eval_loss_final_min": float(final.min()),
                "eval_loss_final_max": float(final.max()),
                "final_lr_mean": float(lr.mean()),
                "final_lr_min": float(lr.min()),
                "final_lr_max": float(lr.max()),
                "seconds_mean": float(seconds.mean()),
            }
        )
    return pd.DataFrame(out)


def plot_training(frame: pd.DataFrame, path):  # type: ignore[no-untyped-def]
    """Held-out outer loss against outer step and against seconds; lr against outer step."""
    fig = figure(1, 3, width=4.6, height=3.6)
    ax_step, ax_sec, ax_lr = fig.axes
    evals = frame[frame["metric"] == "eval_outer_loss"]
    lrs = frame[frame["metric"] == "lr"]
    for estimator in ESTIMATORS:
        colour = ESTIMATOR_COLOURS[estimator]
        for k, (_, run) in enumerate(evals[evals["variant"] == estimator].groupby("seed")):
            label = ESTIMATOR_LABELS[estimator] if k == 0 else None
            ax_step.plot(run["step"], run["value"], color=colour, marker="o", ms=3, label=label)
            ax_sec.plot(run["seconds"], run["value"], color=colour, marker="o", ms=3)
        for _, run in lrs[lrs["variant"] == estimator].groupby("seed"):
            ax_lr.plot(run["step"], run["value"], color=colour, marker="o", ms=3)
    ax_step.set_xlabel("outer step")
    ax_sec.set_xlabel("meta-training seconds (1 thread)")
    for ax in (ax_step, ax_sec):
        ax.set_ylabel("held-out outer loss")
    ax_lr.axhline(2.0, color="grey", ls=":", lw=0.8)
    ax_lr.set_xlabel("outer step")
    ax_lr.set_ylabel("learning rate exp(theta)")
    ax_step.set_title("outer loss vs outer step (one line per seed)")
    ax_sec.set_title("outer loss vs seconds")
    ax_lr.set_title("the learned learning rate")
    ax_step.legend(fontsize=7)
    return save(fig, path)
