"""``PathologyConfig``: every option of ``lopt pathology``, with its default.

A plain dataclass (``Optional[...]`` for nullable fields, lists for sequences), so it is also a
Hydra structured config. :func:`coerce_pathology_config` turns a mapping or an OmegaConf node
into a checked config; :meth:`PathologyConfig.check` raises one-line ``UsageError``s.

The command line keeps one flat key per setting (``training_unroll=316``: the keys of the
committed study's commands); the studies read their own settings nested
(``cfg.training.unroll``, :meth:`PathologyConfig.settings`) and each study's settings class
checks them.

``quick=true`` replaces every size (grid points, lengths, samples, seeds, outer steps) by a tiny
one (:data:`QUICK_SIZES`): each study then runs in a few seconds, which is what the tests use.
The defaults are the sizes of the committed study (``results/pathology/README.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.settings.outer import check_shared
from harness.settings.validate import config_data, finite, integer, number, one_of, typed_fields

STUDIES = ("landscape", "variance", "training", "truncation")
ESTIMATORS = ("rp", "es", "merged")

#: the sizes ``quick=true`` uses (every other option keeps its value)
QUICK_SIZES: dict[str, Any] = {
    "landscape_lengths": [4, 16, 64],
    "landscape_points": 41,
    "landscape_lopt_points": 21,
    "variance_lengths": [4, 16, 64],
    "variance_samples": 16,
    "variance_batch": 4,
    "training_unroll": 32,
    "training_seeds": 1,
    "training_outer_steps": 4,
    "training_problems": 4,
    "training_eval_every": 2,
    "training_eval_problems": 2,
    "training_lopt_unroll": 200,
    "training_lopt_outer_steps": 3,
    "truncation_outer_steps": 3,
    "truncation_problems": 2,
    "truncation_short_unroll": 2,
    "truncation_long_unroll": 6,
    "truncation_horizon": 12,
    "truncation_eval_seeds": 1,
}


# -- each study's settings ------------------------------------------------------------------------
# On the command line (and in PathologyConfig) a study's settings are flat keys with the study's
# name as prefix (``training_unroll=...``); the studies read them nested (``cfg.training.unroll``)
# and each study checks its own. Their defaults and documentation are PathologyConfig's.
def _lengths(name: str, lengths: Any) -> None:
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) for n in lengths):
        raise UsageError(f"{name} must be a non-empty list of integers, got {lengths!r}")
    if any(n < 1 for n in lengths) or list(lengths) != sorted(set(lengths)):
        raise UsageError(f"{name} must be increasing positive integers, got {lengths!r}")


def _low_high(name: str, low_high: Any) -> None:
    if len(low_high) != 2 or not all(finite(v) for v in low_high):
        raise UsageError(f"{name} must be [low, high], got {low_high!r}")
    if not low_high[0] < low_high[1]:
        raise UsageError(f"{name} must have low < high, got {low_high!r}")


@dataclass(frozen=True)
class LandscapeSettings:
    """``landscape_*``: the outer-loss landscape against the unroll length."""

    lr_range: list[float]
    points: int
    alpha_range: list[float]
    lopt_points: int
    lengths: list[int]

    def check(self) -> None:
        integer("landscape_points", self.points, 2)
        integer("landscape_lopt_points", self.lopt_points, 2)
        _lengths("landscape_lengths", self.lengths)
        _low_high("landscape_lr_range", self.lr_range)
        _low_high("landscape_alpha_range", self.alpha_range)
        if self.lr_range[0] <= 0:
            raise UsageError(f"landscape_lr_range must be > 0, got {self.lr_range!r}")


@dataclass(frozen=True)
class VarianceSettings:
    """``variance_*``: the estimators' variance against the unroll length."""

    lrs: list[float]
    lengths: list[int]
    samples: int
    batch: int

    def check(self) -> None:
        integer("variance_samples", self.samples, 1)
        integer("variance_batch", self.batch, 1)
        _lengths("variance_lengths", self.lengths)
        if self.batch < 2 or self.samples < 2 * self.batch:
            raise UsageError(
                "variance_batch must be >= 2 and variance_samples >= 2 * variance_batch (the "
                f"merged estimate's variance needs two batches); got {self.batch} and "
                f"{self.samples}"
            )
        if not self.lrs:
            raise UsageError("variance_lrs must list at least one learning rate")
        if any(not (finite(lr) and lr > 0) for lr in self.lrs):
            raise UsageError(f"variance_lrs must be > 0, got {list(self.lrs)}")


@dataclass(frozen=True)
class TrainingSettings:
    """``training_*``: outer training with each estimator, at equal compute."""

    init_lr: float
    unroll: int
    horizon: int
    problems: int
    outer_steps: int
    seeds: int
    lr: float
    eval_every: int
    eval_problems: int
    lopt_unroll: int
    lopt_step_scale: float
    lopt_outer_steps: int
    lopt_lr: float

    def check(self) -> None:
        for name in (
            "unroll",
            "horizon",
            "outer_steps",
            "seeds",
            "eval_every",
            "eval_problems",
            "lopt_unroll",
            "lopt_outer_steps",
        ):
            integer(f"training_{name}", getattr(self, name), 1)
        integer("training_problems", self.problems, 2)
        for name in ("init_lr", "lr", "lopt_lr", "lopt_step_scale"):
            number(f"training_{name}", getattr(self, name), 0.0, strict=True)


@dataclass(frozen=True)
class TruncationSettings:
    """``truncation_*``: a constant short unroll against a schedule of lengths."""

    short_unroll: int
    long_unroll: int
    horizon: int
    outer_steps: int
    problems: int
    lr: float
    eval_seeds: int

    def check(self) -> None:
        for name in ("short_unroll", "long_unroll", "horizon", "outer_steps", "problems"):
            integer(f"truncation_{name}", getattr(self, name), 1)
        integer("truncation_eval_seeds", self.eval_seeds, 1)
        number("truncation_lr", self.lr, 0.0, strict=True)
        if self.short_unroll > self.long_unroll:
            raise UsageError(
                f"truncation_short_unroll ({self.short_unroll}) must be <= "
                f"truncation_long_unroll ({self.long_unroll})"
            )


SETTINGS: dict[str, type] = {
    "landscape": LandscapeSettings,
    "variance": VarianceSettings,
    "training": TrainingSettings,
    "truncation": TruncationSettings,
}


# Hydra's structured configs need typing.Optional (OmegaConf 2.3 does not read PEP 604 unions).
@dataclass
class PathologyConfig:
    """``lopt pathology``: the pathology study (Metz et al. 2019, sections 3-4).

    Attributes:
        study: ``all`` or one of ``landscape``, ``variance``, ``training``, ``truncation``.
        out: the folder for the tidy CSVs, the PNGs and ``summary.md``.
        quick: tiny sizes (:data:`QUICK_SIZES`): seconds per study, for tests and smoke runs.
        seed: fixes every inner problem, batch, perturbation and direction of the study.
        threads: torch threads (1: the fastest on a shared 2-core machine for these tiny
            models; None: torch's default).
        progress: a bar per study on stderr over its pieces of work (None: on a terminal, else
            plain lines; false: nothing).
        task, task_cfg: the task of every study (default: the noisy quadratic, whose largest
            Hessian eigenvalue is 1: SGD is stable for lr < 2).
        sigma: the perturbation's standard deviation (ES and the smoothing of rp).

        landscape_lr_range: ``[low, high]`` learning rates of the log-spaced grid of the
            learnable-learning-rate curve (SGD, theta = [log lr]).
        landscape_points: grid points of that curve.
        landscape_alpha_range: ``[low, high]`` of the slice coordinate ``alpha`` in
            ``theta = theta_0 + alpha u`` (``theta_0`` = the untrained learned optimizer;
            ``u`` a random direction of unit norm).
        landscape_lopt_points: grid points of the slice.
        landscape_lengths: unroll lengths (every curve is measured at all of them, as prefixes
            of one unroll from inner step 0 with fixed batches).

        variance_lrs: the learning rates theta = [log lr] is fixed at (one measurement each).
        variance_lengths: unroll lengths.
        variance_samples: per-sample estimates per length (different inner problems and
            perturbations at the same theta).
        variance_batch: B, the batch a merged estimate is computed over (the samples are
            split into ``variance_samples // variance_batch`` batches).

        training_init_lr: the learning rate outer training starts from (SGD, theta = [log lr]).
        training_unroll: the constant unroll length.
        training_horizon: the inner horizon (problems are reset after it).
        training_problems: B.
        training_outer_steps: outer steps of every run (equal compute: the same unrolls for
            every estimator).
        training_seeds: seeds per estimator.
        training_lr: Adam's learning rate on theta.
        training_eval_every: outer steps between evaluations of theta on held-out problems.
        training_eval_problems: held-out problems of an evaluation (unrolls of
            the run's unroll length from inner step 0).
        training_lopt_unroll, training_lopt_outer_steps, training_lopt_lr: the same study for
            the learned optimizer (the MLP): its constant unroll length, outer steps and Adam
            learning rate (B, horizon, seeds and evaluation as above).
        training_lopt_step_scale: the learned optimizer starts from the untrained MLP with a
            normalised-gradient path wired in and steps this many times larger
            (``harness.pathology.training.large_step_theta``): large enough for chaotic inner
            dynamics on the quadratic, where rp explodes.

        truncation_short_unroll: the constant schedule's unroll length.
        truncation_long_unroll: the linear schedule's maximum (from ``truncation_short_unroll``).
        truncation_horizon: the inner horizon (meta-training and evaluation).
        truncation_outer_steps, truncation_problems, truncation_lr: meta-training of the
            learned optimizer (merged estimator).
        truncation_eval_seeds: fresh inner problems each meta-trained optimizer is evaluated
            on over the whole horizon.
    """

    study: str = "all"
    out: str = "results/pathology"
    quick: bool = False
    seed: int = 0
    threads: Optional[int] = 1  # noqa: UP045
    progress: Optional[bool] = None  # noqa: UP045
    task: str = "quadratic"
    task_cfg: dict[str, Any] = field(default_factory=lambda: {"noise": 1.0})
    sigma: float = 0.01

    landscape_lr_range: list[float] = field(default_factory=lambda: [1.5, 2.5])
    landscape_points: int = 301
    landscape_alpha_range: list[float] = field(default_factory=lambda: [-40.0, 40.0])
    landscape_lopt_points: int = 201
    landscape_lengths: list[int] = field(
        default_factory=lambda: [10, 18, 32, 56, 100, 178, 316, 562, 1000]
    )

    variance_lrs: list[float] = field(default_factory=lambda: [1.9, 2.01])
    variance_lengths: list[int] = field(
        default_factory=lambda: [10, 18, 32, 56, 100, 178, 316, 562, 1000]
    )
    variance_samples: int = 128
    variance_batch: int = 8

    training_init_lr: float = 2.05
    training_unroll: int = 316
    training_horizon: int = 1000
    training_problems: int = 8
    training_outer_steps: int = 30
    training_seeds: int = 3
    training_lr: float = 0.05
    training_eval_every: int = 5
    training_eval_problems: int = 4
    training_lopt_unroll: int = 200
    training_lopt_step_scale: float = 1000.0
    training_lopt_outer_steps: int = 40
    training_lopt_lr: float = 1e-2

    truncation_short_unroll: int = 10
    truncation_long_unroll: int = 100
    truncation_horizon: int = 500
    truncation_outer_steps: int = 200
    truncation_problems: int = 8
    truncation_lr: float = 3e-3
    truncation_eval_seeds: int = 8

    def check(self) -> PathologyConfig:
        """Raise a one-line ``UsageError`` for the first invalid value; returns ``self``."""
        one_of("study", self.study, ("all", *STUDIES))
        check_shared(self)  # out, seed, sigma, task_cfg
        if self.threads is not None:
            integer("threads", self.threads, 1)
        for study in STUDIES:
            self.settings(study).check()
        if "device" in self.task_cfg:
            raise UsageError("the pathology study runs on the CPU: task_cfg takes no device")
        if not isinstance(self.task, str) or not self.task:
            raise UsageError(f"task must name a registered task, got {self.task!r}")
        return self

    def settings(self, study: str) -> Any:
        """The settings of one study (its ``STUDY_*`` fields, without the prefix), e.g.
        ``cfg.settings("training").unroll`` is ``cfg.training_unroll``."""
        cls = SETTINGS[study]
        return cls(**{f.name: getattr(self, f"{study}_{f.name}") for f in dataclasses.fields(cls)})

    @property
    def landscape(self) -> LandscapeSettings:
        return self.settings("landscape")

    @property
    def variance(self) -> VarianceSettings:
        return self.settings("variance")

    @property
    def training(self) -> TrainingSettings:
        return self.settings("training")

    @property
    def truncation(self) -> TruncationSettings:
        return self.settings("truncation")

    def sized(self) -> PathologyConfig:
        """This configuration with :data:`QUICK_SIZES` applied when ``quick`` (else itself)."""
        if not self.quick:
            return self
        return dataclasses.replace(self, **QUICK_SIZES)

    def studies(self) -> tuple[str, ...]:
        """The studies to run, in order."""
        return STUDIES if self.study == "all" else (self.study,)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        return dataclasses.asdict(self)


def coerce_pathology_config(cfg: Any = None, **overrides: Any) -> PathologyConfig:
    """A checked :class:`PathologyConfig` from a ``PathologyConfig``, a mapping or an OmegaConf
    node, updated with ``overrides``; unknown keys raise ``UsageError``."""
    data = config_data(cfg, PathologyConfig, "pathology")
    data.update(overrides)
    data = typed_fields(data, PathologyConfig, "pathology")
    return PathologyConfig(**data).check()
