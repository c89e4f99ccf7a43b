"""Study 2: the variance of the rp, ES and merged gradient estimates against unroll length.

At a fixed theta (SGD, theta = [log lr], one measurement per learning rate of
``variance_lrs``), for every unroll length: ``variance_samples`` antithetic pairs, each on its
own inner problem (fresh initialisation, its own batches, its own perturbation), unrolled from
inner step 0 (:func:`harness.meta.estimators.antithetic_pairs_batched`: the trainer's own
estimators). Every pair gives one rp and one ES sample; the samples are cut into batches of
``variance_batch`` and each batch gives one merged estimate
(:func:`harness.meta.estimators.inverse_variance_merge`, the trainer's merge) and its ES weight.

Rows: ``metric=estimate`` (variant ``rp``/``es``: one per sample, ``step`` = the sample index;
variant ``merged``: one per batch, ``step`` = the batch index; for theta of several elements
the value is the first element), ``metric=es_weight`` per batch, ``metric=outer_loss`` per
sample (the mean of L+ and L-), and ``metric=dropped`` (non-finite samples) per estimator.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.meta.estimators import SampleSums, antithetic_pairs_batched, inverse_variance_merge
from harness.meta.truncation import STREAM_PERTURBATION, derive_seed
from harness.pathology.common import (
    fit_growth,
    log_lr_theta,
    row,
    sgd_problems,
    study_progress,
)
from harness.pathology.report import ESTIMATOR_COLOURS, ESTIMATOR_LABELS, figure, frame_table, save
from harness.pathology.study import StudyBase
from harness.settings.pathology import ESTIMATORS, PathologyConfig
from tasks.base import Task

STUDY = "variance"
CHUNK = 32  # pairs per vmap call


def run_variance(cfg: PathologyConfig, task: Task) -> pd.DataFrame:
    """The tidy rows of every learning rate and length."""
    progress = study_progress(
        cfg.progress, STUDY, total=len(cfg.variance.lrs) * len(cfg.variance.lengths)
    )
    rows: list[dict] = []
    count, batch = cfg.variance.samples, cfg.variance.batch
    for lr in cfg.variance.lrs:
        theta = log_lr_theta(lr)
        problems = sgd_problems(task, seed=cfg.seed, num_problems=count)
        variant_tag = f"lr={lr:g}"
        for length in cfg.variance.lengths:
            samples = []
            for first in range(0, count, CHUNK):
                ids = range(first, min(count, first + CHUNK))
                states = [problems.fresh_state(i, 0) for i in ids]
                datas = [problems.data(i, s, length) for i, s in zip(ids, states, strict=True)]
                noises = torch.stack([_noise(cfg.seed, length, i, theta.numel()) for i in ids])
                samples += antithetic_pairs_batched(
                    problems, theta, noises, cfg.sigma, states, datas, rp=True
                )
            common = {
                "study": STUDY,
                "task": task.name,
                "optimizer": "hparam_sgd",
                "unroll_length": length,
                "x": float(theta[0]),
                "seed": cfg.seed,
            }
            for i, sample in enumerate(samples):
                loss = 0.5 * (sample.loss_plus + sample.loss_minus)
                rows.append(row(**common, variant="loss", step=i, metric="outer_loss", value=loss))
                for name in ("rp", "es"):
                    value = float(getattr(sample, name)[0])
                    rows.append(row(**common, variant=name, step=i, metric="estimate", value=value))
            dropped = {"rp": 0.0, "es": 0.0}
            for b in range(count // batch):
                sums = SampleSums(theta.numel())
                for sample in samples[b * batch : (b + 1) * batch]:
                    sums.add(sample, reset=False)
                dropped["rp"] += sums.stats["dropped_rp"]
                dropped["es"] += sums.stats["dropped_es"]
                merged = inverse_variance_merge(sums)
                value = float(merged.grad[0])
                rows.append(row(**common, variant="merged", step=b, metric="estimate", value=value))
                rows.append(
                    row(
                        **common,
                        variant="merged",
                        step=b,
                        metric="es_weight",
                        value=merged.es_weight,
                    )
                )
            for name, value in dropped.items():
                rows.append(row(**common, variant=name, metric="dropped", value=value))
            progress.update(note=f"{variant_tag} T={length}: {count} pairs")
    return pd.DataFrame(rows)


def _noise(seed: int, length: int, sample: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(
        derive_seed(seed, STREAM_PERTURBATION, length, sample)
    )
    return torch.randn(size, generator=generator)


def variance_summary(frame: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Per learning rate, length and estimator: the mean, the variance of one sample, the
    variance of a batch estimate (rp, ES: the per-sample variance / B; merged: measured across
    batches), the mean |estimate|, the mean ES weight of the merge."""
    out = []
    estimates = frame[frame["metric"] == "estimate"]
    weights = frame[frame["metric"] == "es_weight"]
    for (x, length, variant), group in estimates.groupby(["x", "unroll_length", "variant"]):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        var = float(np.var(finite, ddof=1)) if finite.size > 1 else math.nan
        weight = weights[(weights["x"] == x) & (weights["unroll_length"] == length)]["value"]
        out.append(
            {
                "lr": round(math.exp(x), 6),
                "unroll_length": int(length),
                "estimator": variant,
                "mean": float(finite.mean()) if finite.size else math.nan,
                "mean_abs": float(np.abs(finite).mean()) if finite.size else math.nan,
                "sample_variance": var if variant != "merged" else math.nan,
                "batch_variance": var / batch if variant != "merged" else var,
                "es_weight": float(weight.mean()) if variant == "merged" else math.nan,
                "samples": int(finite.size),
            }
        )
    table = pd.DataFrame(out)
    order = {name: i for i, name in enumerate(ESTIMATORS)}
    table["_o"] = table["estimator"].map(order)
    return (
        table.sort_values(["lr", "_o", "unroll_length"]).drop(columns="_o").reset_index(drop=True)
    )


def growth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Fitted growth of the batch-estimate variance with the unroll length, per learning rate
    and estimator (:func:`harness.pathology.common.fit_growth`)."""
    out = []
    for (lr, estimator), group in summary.groupby(["lr", "estimator"], sort=False):
        fit = fit_growth(group["unroll_length"], group["batch_variance"])
        first, last = group.iloc[0], group.iloc[-1]
        out.append(
            {
                "lr": lr,
                "estimator": estimator,
                f"var_T{int(first['unroll_length'])}": first["batch_variance"],
                f"var_T{int(last['unroll_length'])}": last["batch_variance"],
                "rate_per_step": fit["rate"],
                "r2_exponential": fit["r2_exponential"],
                "power_exponent": fit["exponent"],
                "r2_power": fit["r2_power"],
            }
        )
    return pd.DataFrame(out)


def plot_variance(summary: pd.DataFrame, path):  # type: ignore[no-untyped-def]
    """Per learning rate: batch-estimate variance and mean |estimate| against the unroll length
    (log-log), and the merge's ES weight."""
    lrs = sorted(summary["lr"].unique())
    fig = figure(len(lrs), 3, width=4.6, height=3.4)
    for r, lr in enumerate(lrs):
        part = summary[summary["lr"] == lr]
        ax_var, ax_norm, ax_w = fig.axes[3 * r : 3 * r + 3]
        for estimator in ESTIMATORS:
            curve = part[part["estimator"] == estimator]
            style = {"color": ESTIMATOR_COLOURS[estimator], "marker": "o", "ms": 3}
            label = ESTIMATOR_LABELS[estimator]
            ax_var.plot(curve["unroll_length"], curve["batch_variance"], label=label, **style)
            ax_norm.plot(curve["unroll_length"], curve["mean_abs"], label=label, **style)
            if estimator == "merged":
                ax_w.plot(curve["unroll_length"], curve["es_weight"], **style)
        for ax in (ax_var, ax_norm):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("unroll length T")
        ax_var.set_ylabel("variance of a batch estimate")
        ax_norm.set_ylabel("mean |estimate|")
        ax_var.set_title(f"SGD lr={lr:g}: variance (B-sample batch)")
        ax_norm.set_title(f"lr={lr:g}: mean |estimate|")
        ax_w.set_xscale("log")
        ax_w.set_ylim(-0.05, 1.05)
        ax_w.set_xlabel("unroll length T")
        ax_w.set_ylabel("ES weight var_rp / (var_rp + var_es)")
        ax_w.set_title(f"lr={lr:g}: merged estimator's ES weight")
        ax_var.legend(fontsize=7)
    return save(fig, path)


class VarianceStudy(StudyBase):
    """Study 2 under the study protocol (:mod:`harness.pathology.study`)."""

    name = STUDY
    title = "2. Estimator variance against unroll length"

    def run(self, cfg: PathologyConfig, task: Task) -> pd.DataFrame:
        return run_variance(cfg, task)

    def table(self, cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
        return variance_summary(frame, cfg.variance.batch)

    def plot(self, cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
        return plot_variance(variance_summary(frame, cfg.variance.batch), path)

    def summary(self, table: pd.DataFrame) -> str:
        """The figure, the fitted growth of the variance with T, then the table."""
        return (
            f"![{self.name}]({self.name}.png)\n\n"
            "Fitted growth of the batch-estimate variance with T:\n\n"
            + frame_table(growth_table(table))
            + "\n\n"
            + frame_table(table)
        )


STUDY_OBJECT = VarianceStudy()
