"""What a person judges a gradient estimate by, every outer step.

* split-half cosine: the mean of the samples of the even pairs against the mean of the odd
  pairs. Two halves of a pure-noise estimate point in unrelated directions (about 0, spread
  ``1/sqrt(D)``); a signal that dominates the noise gives about 1.
* per-element signal-to-noise ratio: for element j of theta the mean of the samples over its
  standard error, ``|mean_j| / (sd_j / sqrt(n))``, averaged over the elements. Pure noise gives
  about ``sqrt(2 / pi) = 0.80``; the control (below) measures the floor at this n and D.
* the control: every sample replaced by a random direction of the same norm (seeded per outer
  step and pair), through the same two meters. What the estimate scores above its control is
  signal.

All four come from one :class:`harness.meta.estimators.SampleSums` over the slots
:data:`METER_SLOTS` (sums, not samples, so a distributed run all-reduces one vector as before);
the gradient is the mean over both halves. The run's summary reports the medians over outer
steps; when the median split-half cosine is below :data:`NOISE_COSINE` the progress line says
the estimate is noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import torch

from harness.meta.estimators import SampleSums, mean_and_variance
from harness.meta.truncation import derive_seed

#: the halves of the estimate and of its control
METER_SLOTS = ("half_a", "half_b", "control_a", "control_b")
STREAM_CONTROL = 25
#: below this median split-half cosine the estimate is called noise
NOISE_COSINE = 0.1
#: the meters, as logged
METER_NAMES = ("split_cosine", "snr", "control_split_cosine", "control_snr")


def half_of(pair: int) -> str:
    """``a`` for even pairs, ``b`` for odd ones."""
    return "a" if pair % 2 == 0 else "b"


def control_direction(sample: torch.Tensor, seed: int, outer_step: int, pair: int) -> torch.Tensor:
    """A random direction (seeded by ``(seed, outer_step, pair)``) with ``sample``'s norm."""
    generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_CONTROL, outer_step, pair))
    direction = torch.randn(sample.numel(), generator=generator, dtype=torch.float64)
    return direction * (sample.double().norm() / direction.norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine between two vectors (NaN if either is zero)."""
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else math.nan


def snr(total: torch.Tensor, total_sq: torch.Tensor, count: float) -> float:
    """The mean over elements of ``|mean| / (sd / sqrt(count))`` (NaN below two samples)."""
    mean, variance = mean_and_variance(total, total_sq, count)
    if variance is None:
        return math.nan
    return float((mean.abs() / (variance / count).sqrt()).mean())


def combined(sums: SampleSums, prefix: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The sum, the sum of squares and the count of both halves of ``prefix``."""
    a, b = f"{prefix}_a", f"{prefix}_b"
    return (
        sums.sums[a] + sums.sums[b],
        sums.sumsqs[a] + sums.sumsqs[b],
        sums.counts[a] + sums.counts[b],
    )


def gradient(sums: SampleSums) -> torch.Tensor | None:
    """The mean of all finite samples (float64 ``[D]``), None without any."""
    total, _, count = combined(sums, "half")
    return total / count if count > 0 else None


def meters(sums: SampleSums) -> dict[str, float]:
    """The four meters of one outer step's all-reduced sums (module docstring)."""
    out = {}
    for prefix, name in (("half", ""), ("control", "control_")):
        out[f"{name}split_cosine"] = cosine(sums.sums[f"{prefix}_a"], sums.sums[f"{prefix}_b"])
        out[f"{name}snr"] = snr(*combined(sums, prefix))
    return out


def medians(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Per meter the median over outer steps of its finite values (NaN when none)."""
    rows = list(rows)
    out = {}
    for name in METER_NAMES:
        values = [r[name] for r in rows if name in r and math.isfinite(r[name])]
        out[name] = statistics.median(values) if values else math.nan
    return out


def verdict(median: dict[str, float]) -> str:
    """The words the progress line adds: the estimate is noise when its median split-half
    cosine is below :data:`NOISE_COSINE` (nothing otherwise, or before any step)."""
    value = median.get("split_cosine", math.nan)
    if math.isfinite(value) and value < NOISE_COSINE:
        return (
            f"THE ESTIMATE IS NOISE (median split-half cosine {value:.3f} < {NOISE_COSINE}): "
            "one outer step's estimate is mostly noise; judge the run by the held-out loss, or "
            "use more pairs or fewer theta"
        )
    return ""


def add_sample(
    sums: SampleSums,
    pair: int,
    sample: torch.Tensor,
    control: torch.Tensor,
) -> None:
    """Count one pair's sample and its control in its half (a non-finite sample is dropped
    with its control, and counted in ``dropped_half_<h>``)."""
    half = half_of(pair)
    if not bool(torch.isfinite(sample).all()):
        sums.stats[f"dropped_half_{half}"] += 1
        return
    for slot, value in ((f"half_{half}", sample), (f"control_{half}", control)):
        value = value.detach().to(dtype=torch.float64, device=sums.sums[slot].device)
        sums.counts[slot] += 1
        sums.sums[slot].add_(value)
        sums.sumsqs[slot].addcmul_(value, value)


def new_sums(size: int) -> SampleSums:
    return SampleSums(size=size, slots=METER_SLOTS)


def summary(rows: Sequence[dict[str, float]]) -> str:
    """``split-half cosine 0.41 (control 0.01), SNR 1.9 (control 0.8)`` from the medians."""
    m = medians(rows)
    return (
        f"split-half cosine {m['split_cosine']:.3f} (control {m['control_split_cosine']:.3f}), "
        f"SNR {m['snr']:.3f} (control {m['control_snr']:.3f})"
    )
