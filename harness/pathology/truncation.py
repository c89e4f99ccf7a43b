"""Study 4: truncation bias (short constant unrolls against the increasing schedule).

The learned optimizer (``optimizers.learned``, the paper's MLP) is meta-trained twice on the
same task, seed and budget of outer steps by :class:`harness.meta.trainer.MetaTrainer` with the
merged estimator: once with a constant unroll of ``truncation_short_unroll`` steps, once with
the linear schedule from ``truncation_short_unroll`` to ``truncation_long_unroll``. Both are
then evaluated, with the untrained optimizer as a reference, over the whole inner horizon on
``truncation_eval_seeds`` fresh inner problems: the outer loss after every inner step.

Rows: ``metric`` ``meta_outer_loss``, ``meta_unroll_length``, ``meta_es_weight`` (the
trainer's log, one row per outer step: ``step`` = outer step, ``seconds``) and ``eval_loss``
(``step`` = inner step, ``seed`` = the evaluation problem; :func:`truncation_table` averages
over problems). ``variant`` is ``short``, ``schedule`` or ``untrained``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.meta.trainer import build_trainer
from harness.meta.truncation import InnerProblems
from harness.pathology.common import prefix_outer_losses, row, study_progress
from harness.pathology.report import figure, save
from harness.pathology.study import StudyBase
from harness.settings.meta import coerce_config
from harness.settings.pathology import PathologyConfig
from tasks.base import Task

STUDY = "truncation"
VARIANTS = ("short", "schedule", "untrained")
COLOURS = {"short": "tab:orange", "schedule": "tab:purple", "untrained": "tab:grey"}
EVAL_SEED_OFFSET = 2_000_003


def meta_config(cfg: PathologyConfig, variant: str) -> Any:
    """The :class:`harness.settings.meta.MetaTrainConfig` of the ``short`` or ``schedule`` run."""
    schedule = {
        "short": {"schedule": "constant", "unroll_length": cfg.truncation.short_unroll},
        "schedule": {
            "schedule": "linear",
            "min_unroll": cfg.truncation.short_unroll,
            "max_unroll": cfg.truncation.long_unroll,
        },
    }[variant]
    return coerce_config(
        task=cfg.task,
        task_cfg=dict(cfg.task_cfg),
        estimator="merged",
        seed=cfg.seed,
        problems=cfg.truncation.problems,
        horizon=cfg.truncation.horizon,
        outer_batches=1,
        sigma=cfg.sigma,
        lr=cfg.truncation.lr,
        parallel="loop" if variant == "short" else "vmap",
        outer_steps=cfg.truncation.outer_steps,
        out="unused",
        progress=False,
        **schedule,
    )


def run_truncation(cfg: PathologyConfig, task: Task) -> pd.DataFrame:
    """Meta-train both, evaluate the three optimizers over the horizon."""
    # meta-training the two variants, then each evaluation problem
    progress = study_progress(cfg.progress, STUDY, total=2 + cfg.truncation.eval_seeds)
    rows: list[dict] = []
    thetas: dict[str, torch.Tensor] = {}
    learner = None
    for variant in ("short", "schedule"):
        trainer = build_trainer(meta_config(cfg, variant), task=task)
        learner = trainer.learner
        if "untrained" not in thetas:
            thetas["untrained"] = trainer.theta.detach().clone()
        common = {"study": STUDY, "task": task.name, "optimizer": "lopt", "variant": variant}
        for _ in range(cfg.truncation.outer_steps):
            metrics = trainer.step()
            for metric in ("outer_loss", "unroll_length", "es_weight"):
                rows.append(
                    row(
                        **common,
                        step=trainer.outer_step,
                        seconds=trainer.seconds,
                        metric=f"meta_{metric}",
                        value=float(metrics[metric]),
                        seed=cfg.seed,
                    )
                )
        thetas[variant] = trainer.theta.detach().clone()
        progress.update(
            note=f"{variant}: {cfg.truncation.outer_steps} outer steps in {trainer.seconds:.1f}s"
        )
    assert learner is not None
    lopt = learner
    horizon = cfg.truncation.horizon
    problems = InnerProblems(
        task,
        lopt,
        num_problems=cfg.truncation.eval_seeds,
        horizon=horizon,
        outer_batches=1,
        objective="train",
        seed=cfg.seed + EVAL_SEED_OFFSET,
    )
    stacked = torch.stack([thetas[v] for v in VARIANTS])
    lengths = list(range(1, horizon + 1))
    for problem in range(cfg.truncation.eval_seeds):
        state = problems.fresh_state(problem, 0)
        data = problems.data(problem, state, horizon)
        means = prefix_outer_losses(problems, stacked, state, data, lengths, vmap=True)
        totals = means * np.arange(1, horizon + 1)
        per_step = np.diff(totals, axis=1, prepend=0.0)
        for k, variant in enumerate(VARIANTS):
            for t in range(horizon):
                rows.append(
                    row(
                        study=STUDY,
                        task=task.name,
                        optimizer="lopt",
                        variant=variant,
                        unroll_length=horizon,
                        step=t + 1,
                        metric="eval_loss",
                        value=float(per_step[k, t]),
                        seed=problem,
                    )
                )
        progress.update(
            note=f"evaluation problem {problem}: {horizon} steps x {len(VARIANTS)} optimizers"
        )
    return pd.DataFrame(rows)


def eval_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean (over evaluation problems) outer loss per inner step, one column per variant."""
    evals = frame[frame["metric"] == "eval_loss"]
    return evals.pivot_table(index="step", columns="variant", values="value", aggfunc="mean")


def truncation_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean outer loss over windows of the inner horizon, per variant, and the inner step after
    which the short-unroll optimizer stays behind the schedule's."""
    curves = eval_curves(frame)
    horizon = int(curves.index.max())
    edges = sorted({1, 11, horizon // 10 + 1, horizon // 2 + 1, horizon + 1})
    out = []
    for lo, hi in itertools.pairwise(edges):
        window = curves.loc[lo : hi - 1]
        entry: dict[str, Any] = {"inner_steps": f"{lo}-{hi - 1}"}
        for variant in VARIANTS:
            entry[variant] = float(window[variant].mean())
        entry["short_minus_schedule"] = entry["short"] - entry["schedule"]
        out.append(entry)
    whole = {"inner_steps": f"1-{horizon} (all)"}
    for variant in VARIANTS:
        whole[variant] = float(curves[variant].mean())
    whole["short_minus_schedule"] = whole["short"] - whole["schedule"]
    out.append(whole)
    return pd.DataFrame(out)


def crossover_step(frame: pd.DataFrame, smooth: int = 25) -> float:
    """The first inner step after which the (moving-average) short-unroll curve stays above
    the schedule's; NaN if it never falls behind for good."""
    curves = eval_curves(frame)
    gap = (curves["short"] - curves["schedule"]).rolling(smooth, min_periods=1).mean()
    behind = (gap > 0).to_numpy()
    if not behind[-1]:
        return float("nan")
    ahead = np.flatnonzero(~behind)
    return float(curves.index[ahead[-1] + 1]) if ahead.size else float(curves.index[0])


def plot_truncation(frame: pd.DataFrame, path):  # type: ignore[no-untyped-def]
    """Meta-training curves, and the three optimizers over the whole inner horizon."""
    fig = figure(1, 3, width=4.6, height=3.6)
    ax_meta, ax_eval, ax_gap = fig.axes
    for variant in ("short", "schedule"):
        meta = frame[(frame["metric"] == "meta_outer_loss") & (frame["variant"] == variant)]
        smooth = meta["value"].rolling(10, min_periods=1).mean()
        ax_meta.plot(meta["step"], smooth, color=COLOURS[variant], label=variant)
    ax_meta.set_xlabel("outer step")
    ax_meta.set_ylabel("meta-training outer loss (10-step mean)")
    ax_meta.set_title("meta-training (own truncations)")
    ax_meta.legend(fontsize=7)
    curves = eval_curves(frame)
    for variant in VARIANTS:
        ax_eval.plot(curves.index, curves[variant], color=COLOURS[variant], lw=0.9, label=variant)
    ax_eval.set_yscale("log")
    ax_eval.set_xlabel("inner step")
    ax_eval.set_ylabel("outer loss (mean over evaluation problems)")
    ax_eval.set_title("evaluated over the whole horizon")
    ax_eval.legend(fontsize=7)
    gap = (curves["short"] - curves["schedule"]).rolling(25, min_periods=1).mean()
    ax_gap.plot(curves.index, gap, color="black", lw=0.9)
    ax_gap.axhline(0.0, color="grey", ls=":", lw=0.8)
    ax_gap.set_xlabel("inner step")
    ax_gap.set_ylabel("short - schedule (25-step mean)")
    ax_gap.set_title("> 0: the short-unroll optimizer is behind")
    return save(fig, path)


class TruncationStudy(StudyBase):
    """Study 4 under the study protocol (:mod:`harness.pathology.study`)."""

    name = STUDY
    title = "4. Truncation bias: short constant unrolls against the increasing schedule"

    def run(self, cfg: PathologyConfig, task: Task) -> pd.DataFrame:
        return run_truncation(cfg, task)

    def table(self, cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
        table = truncation_table(frame)
        table["short_behind_from_step"] = crossover_step(frame)
        return table

    def plot(self, cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
        return plot_truncation(frame, path)


STUDY_OBJECT = TruncationStudy()
