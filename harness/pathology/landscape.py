"""Study 1: the outer-loss landscape against unroll length (smooth for short unrolls, rough for
long ones).

Two curves, each measured for every unroll length as prefixes of one unroll per grid point
(from inner step 0 of one inner problem, with the same batches for every grid point):

* ``log_lr``: SGD with a learnable learning rate (theta = [log lr]) on a log-spaced grid;
* ``alpha``: the learned optimizer (untrained, ``optimizers.learned``) along the line
  ``theta_0 + alpha u`` (``u`` a random direction of unit norm).

The roughness of each curve (:func:`harness.pathology.common.roughness`) is tabulated against
the unroll length.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.meta.truncation import STREAM_THETA, InnerProblems, derive_seed
from harness.pathology.common import (
    prefix_outer_losses,
    roughness,
    row,
    sgd_problems,
    study_progress,
)
from harness.pathology.report import figure, length_colours, save
from harness.pathology.study import StudyBase
from harness.settings.pathology import PathologyConfig
from optimizers.learned import LOptArchitecture, MLPLearner, init_theta
from tasks.base import Task

STUDY = "landscape"


def lopt_problems(task: Task, seed: int) -> tuple[InnerProblems, torch.Tensor]:
    """Inner problems driven by the (untrained) learned optimizer, and its theta_0."""
    architecture = LOptArchitecture()
    theta = init_theta(architecture, derive_seed(seed, STREAM_THETA))
    lopt = MLPLearner.of(architecture)
    problems = InnerProblems(
        task, lopt, num_problems=1, horizon=10**9, outer_batches=1, objective="train", seed=seed
    )
    return problems, theta


def run_landscape(cfg: PathologyConfig, task: Task) -> pd.DataFrame:
    """The tidy rows of both curves (metric ``outer_loss``)."""
    progress = study_progress(cfg.progress, STUDY, total=2)  # the two curves
    lengths = list(cfg.landscape.lengths)
    rows = []

    problems = sgd_problems(task, seed=cfg.seed)
    state = problems.fresh_state(0, 0)
    data = problems.data(0, state, max(lengths))
    low, high = cfg.landscape.lr_range
    log_lrs = np.linspace(math.log(low), math.log(high), cfg.landscape.points)
    thetas = torch.tensor(log_lrs, dtype=torch.float32).unsqueeze(1)
    losses = prefix_outer_losses(problems, thetas, state, data, lengths, vmap=True, chunk=512)
    for i, x in enumerate(log_lrs):
        for j, length in enumerate(lengths):
            rows.append(_row(task, "hparam_sgd", "log_lr", length, x, losses[i, j], cfg.seed))
    progress.update(note=f"log lr curve: {len(log_lrs)} points x {max(lengths)} steps")

    problems, theta0 = lopt_problems(task, cfg.seed)
    state = problems.fresh_state(0, 0)
    data = problems.data(0, state, max(lengths))
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_THETA, 1))
    direction = torch.randn(theta0.numel(), generator=generator)
    direction = direction / direction.norm()
    low, high = cfg.landscape.alpha_range
    alphas = np.linspace(low, high, cfg.landscape.lopt_points)
    thetas = theta0 + torch.tensor(alphas, dtype=torch.float32).unsqueeze(1) * direction
    losses = prefix_outer_losses(problems, thetas, state, data, lengths, vmap=True, chunk=512)
    for i, x in enumerate(alphas):
        for j, length in enumerate(lengths):
            rows.append(_row(task, "lopt", "alpha", length, x, losses[i, j], cfg.seed))
    progress.update(note=f"learned-optimizer slice: {len(alphas)} points x {max(lengths)} steps")
    return pd.DataFrame(rows)


def _row(task: Task, optimizer: str, variant: str, length: int, x: float, value: float, seed: int):  # type: ignore[no-untyped-def]
    return row(
        study=STUDY,
        task=task.name,
        optimizer=optimizer,
        variant=variant,
        unroll_length=length,
        x=float(x),
        metric="outer_loss",
        value=float(value),
        seed=seed,
    )


def landscape_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Roughness of every curve against the unroll length (one row per curve and length)."""
    out = []
    for (variant, length), group in frame.groupby(["variant", "unroll_length"], sort=True):
        curve = group.sort_values("x")["value"].to_numpy()
        stats = roughness(curve)
        out.append(
            {
                "curve": variant,
                "unroll_length": int(length),
                "tv_ratio": stats["tv_ratio"],
                "hf_fraction": stats["hf_fraction"],
                "min_loss": float(np.min(curve)),
                "argmin_x": float(group.sort_values("x")["x"].to_numpy()[int(np.argmin(curve))]),
            }
        )
    return pd.DataFrame(out)


def plot_landscape(frame: pd.DataFrame, path):  # type: ignore[no-untyped-def]
    """Both curves, one line per unroll length, and their roughness against the length."""
    fig = figure(1, 3, width=5.0, height=3.8)
    axes = fig.axes
    lengths = sorted(int(n) for n in frame["unroll_length"].unique())
    colours = length_colours(lengths)
    labels = {
        "log_lr": "learning rate (SGD, theta = log lr)",
        "alpha": "alpha (slice of LOpt theta)",
    }
    for ax, variant in zip(axes[:2], ("log_lr", "alpha"), strict=True):
        part = frame[frame["variant"] == variant]
        for length in lengths:
            curve = part[part["unroll_length"] == length].sort_values("x")
            x = np.exp(curve["x"]) if variant == "log_lr" else curve["x"]
            ax.plot(x, curve["value"], color=colours[length], lw=0.9, label=f"T={length}")
        if variant == "log_lr":
            ax.axvline(2.0, color="grey", ls=":", lw=0.8)
        ax.set_xlabel(labels[variant])
        ax.set_ylabel("outer loss (mean over the unroll, clipped at 10)")
        ax.set_title(f"outer loss along {variant}")
    axes[0].legend(fontsize=7, ncol=2)
    table = landscape_table(frame)
    ax = axes[2]
    for variant, marker in (("log_lr", "o"), ("alpha", "s")):
        part = table[table["curve"] == variant]
        ax.plot(part["unroll_length"], part["tv_ratio"], marker=marker, label=f"{variant}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("unroll length T")
    ax.set_ylabel("total variation / range")
    ax.set_title("roughness against unroll length")
    ax.legend()
    return save(fig, path)


class LandscapeStudy(StudyBase):
    """Study 1 under the study protocol (:mod:`harness.pathology.study`)."""

    name = STUDY
    title = "1. Outer-loss landscape against unroll length (roughness)"

    def run(self, cfg: PathologyConfig, task: Task) -> pd.DataFrame:
        return run_landscape(cfg, task)

    def table(self, cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
        return landscape_table(frame)

    def plot(self, cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
        return plot_landscape(frame, path)


STUDY_OBJECT = LandscapeStudy()
