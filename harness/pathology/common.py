"""What the four measurements share: the tidy table, inner problems for a theta, prefix unrolls.

The tidy table of every study has one row per measurement: the columns of
:data:`harness.results.schema.PATHOLOGY`, i.e. :data:`COLUMNS` (what a study's rows give), then
``study_seconds`` (the study's seconds, added by the command), then the shared provenance
columns and ``source`` = ``pathology``:

=============  ===================================================================================
study          ``landscape``, ``variance``, ``training`` or ``truncation``
task           the registered task
optimizer      ``hparam_sgd`` (theta = [log lr]) or ``lopt`` (the learned optimizer's MLP)
variant        what the row is about inside the study: the curve (``log_lr``, ``alpha``), the
               estimator (``rp``, ``es``, ``merged``) or the truncation schedule
unroll_length  the truncation length (NaN where it does not apply)
x              the theta coordinate of a landscape point (log lr, or alpha); NaN elsewhere
step           the sample index (variance), the outer step (training) or the inner step
               (truncation); NaN elsewhere
seconds        the meta-training seconds up to ``step`` (training); NaN elsewhere
metric, value  the measured quantity and its value (NaN/inf are kept: what was measured)
seed           the seed the measurement derives from
study_seconds  the whole study's wall-clock seconds (the same on each of its rows)
=============  ===================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.meta.truncation import (
    LOSS_CLIP,
    InnerProblems,
    InnerState,
    TruncationData,
)
from harness.progress import Progress
from harness.results.schema import PATHOLOGY
from harness.util import write_atomically
from optimizers.learned_hparams import HParamArchitecture, LearnedHParams, encode_theta
from tasks.base import Task

#: the columns a study's rows give (:func:`row`): the schema's own but ``study_seconds``
COLUMNS = tuple(c for c in PATHOLOGY.own if c != "study_seconds")
#: plain SGD with a learnable learning rate: theta = [log lr]
SGD_ARCHITECTURE = HParamArchitecture(learn_momentum=False, momentum=0.0)


def row(**values: Any) -> dict[str, Any]:
    """One tidy row: the given columns, NaN for the numeric columns not given."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown tidy columns {sorted(unknown)}")
    out: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    out.update(values)
    return out


def tidy_frame(
    rows: Sequence[dict[str, Any]],
    device: torch.device | str = "cpu",
    study_seconds: float = math.nan,
) -> pd.DataFrame:
    """The rows as the study's tidy table (:data:`harness.results.schema.PATHOLOGY`: its
    columns, ``study_seconds`` on every row, the provenance columns, ``source``)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame["study_seconds"] = study_seconds
    return PATHOLOGY.frame(frame, device)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` atomically (no index); returns ``path``."""
    return write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))


def study_progress(enabled: bool | None, study: str, total: int) -> Progress:
    """The progress display of a study over its ``total`` pieces of work
    (:class:`harness.progress.Progress`: ``enabled`` None is a bar on a terminal, else plain
    lines; False nothing); each finished piece is ``progress.update(note=message)``."""
    return Progress(total, desc=f"pathology {study}", unit="piece", show=enabled)


def sgd_problems(
    task: Task, *, seed: int, num_problems: int = 1, horizon: int = 10**9, outer_batches: int = 1
) -> InnerProblems:
    """Inner problems of ``task`` driven by SGD with a learnable learning rate (theta = [log
    lr]); outer-train objective, ``outer_batches`` K."""
    return InnerProblems(
        task,
        LearnedHParams.of(SGD_ARCHITECTURE),
        num_problems=num_problems,
        horizon=horizon,
        outer_batches=outer_batches,
        objective="train",
        seed=seed,
    )


def log_lr_theta(lr: float) -> torch.Tensor:
    """theta = [log lr]."""
    return encode_theta(lr, learn_momentum=False)


def prefix_outer_losses(
    problems: InnerProblems,
    thetas: torch.Tensor,
    state: InnerState,
    data: TruncationData,
    lengths: Sequence[int],
    *,
    vmap: bool = False,
    chunk: int = 64,
) -> np.ndarray:
    """The outer loss of every theta for every unroll length, from one unroll per theta.

    All thetas start from ``state`` and see the same batches (``data``, at least
    ``max(lengths)`` steps). The outer loss of length ``T`` is the mean of the clipped per-step
    outer losses over the first ``T`` steps: exactly what ``problems.unroll`` returns for the
    truncation ``data[:T]``; it is computed by unrolling chunk after chunk
    (``[0, lengths[0])``, ``[lengths[0], lengths[1])``, ...) and weighting the chunk means, so
    the longest unroll costs what one unroll costs. Without autograd.

    Args:
        thetas: ``(M, P)``.
        vmap: run the thetas together with ``problems.unroll_batched`` (``chunk`` at a time);
            otherwise one ``problems.unroll`` after the other.

    Returns ``(M, len(lengths))`` float64; a non-finite outer loss (a diverged unroll: NaN
    parameters) is recorded as the clip value, 10, the loss a diverged run is charged.
    """
    if data.length < max(lengths):
        raise ValueError(f"data has {data.length} steps; the longest length is {max(lengths)}")
    count = thetas.shape[0]
    out = np.zeros((count, len(lengths)))
    for first in range(0, count, chunk if vmap else 1):
        block = thetas[first : first + (chunk if vmap else 1)]
        states = [state] * block.shape[0]
        total = np.zeros(block.shape[0])
        previous = 0
        for j, length in enumerate(lengths):
            piece = TruncationData(
                inner=data.inner[previous:length], outer=data.outer[previous:length]
            )
            if vmap:
                losses, _, states = problems.unroll_batched(
                    block, states, [piece] * block.shape[0], grad_mode="none"
                )
                values = losses.double().numpy()
            else:
                loss, final = problems.unroll(block[0], states[0], piece, grad_mode="none")
                states, values = [final], np.array([float(loss)])
            values = np.where(np.isfinite(values), values, LOSS_CLIP)
            total += values * (length - previous)
            previous = length
            out[first : first + block.shape[0], j] = total / length
    return out


def fit_growth(lengths: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """Least-squares fits of ``log(value)`` against the length ``T`` and against ``log T``.

    * exponential: ``log v = a + rate * T``  (``rate``: growth per inner step; the e-folding
      length is ``1 / rate``);
    * power law:   ``log v = b + exponent * log T``.

    Returns ``{"rate", "r2_exponential", "exponent", "r2_power", "points"}`` (R^2 of each fit in
    log space; NaN when fewer than 3 finite positive values). Non-positive and non-finite values
    are left out.
    """
    t = np.asarray(lengths, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(v) & (v > 0) & np.isfinite(t) & (t > 0)
    t, y = t[keep], np.log(v[keep])
    result = {
        "rate": math.nan,
        "r2_exponential": math.nan,
        "exponent": math.nan,
        "r2_power": math.nan,
        "points": float(keep.sum()),
    }
    if keep.sum() < 3:
        return result
    for name, r2_name, x in (("rate", "r2_exponential", t), ("exponent", "r2_power", np.log(t))):
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        spread = float(((y - y.mean()) ** 2).sum())
        result[name] = float(slope)
        result[r2_name] = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return result


def roughness(values: Sequence[float]) -> dict[str, float]:
    """How rough a curve sampled on a uniform grid is (both measures are scale-free).

    * ``tv_ratio``: total variation over range, ``sum |y[i+1] - y[i]| / (max y - min y)``: 1
      for a monotone curve, 2 for one valley, large for a curve that goes up and down often.
    * ``hf_fraction``: the fraction of the power of the mean-removed, linearly detrended
      curve at frequencies above a tenth of the Nyquist frequency (the discrete Fourier
      transform): near 0 for a smooth curve, larger when fine-scale wiggles carry the energy.

    NaN for a constant curve (no variation to speak of).
    """
    y = np.asarray(values, dtype=float)
    span = float(y.max() - y.min()) if y.size else 0.0
    if y.size < 4 or not np.isfinite(span) or span <= 1e-12:
        return {"tv_ratio": math.nan, "hf_fraction": math.nan}
    tv = float(np.abs(np.diff(y)).sum()) / span
    x = np.arange(y.size, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    power = np.abs(np.fft.rfft(y - (slope * x + intercept))) ** 2
    power = power[1:]
    cut = max(1, len(power) // 10)
    total = float(power.sum())
    hf = float(power[cut:].sum()) / total if total > 0 else math.nan
    return {"tv_ratio": tv, "hf_fraction": hf}
