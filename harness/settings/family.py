"""``FamilyMetaTrainConfig``: every option of ``lopt meta-train family=NAME``, with its default
and its check (the sibling of :class:`harness.settings.meta.MetaTrainConfig`, which trains on one
task with the per-problem loop).

Plain data: :func:`coerce_family_config` turns a mapping (the command line's ``key=value``
overrides) into a checked config, and :meth:`FamilyMetaTrainConfig.check` raises one-line
``UsageError``s naming the setting, what is allowed and the value given. Checking builds
nothing: :func:`harness.resolve.resolve_family` looks the family and the learner up (and checks
the learner runs batched). The defaults follow Celo (``/work/shared/reference/recipes.md``):
PES, truncations of 50 steps, horizons log-uniform in 100-2,000, 32 antithetic pairs per outer
step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.settings.outer import check_shared, check_workers
from harness.settings.validate import config_data, integer, one_of, positive_int, typed_fields
from harness.util import to_plain

#: harness.meta.family.estimators.FAMILY_ESTIMATORS, in this order
FAMILY_ESTIMATORS = ("pes", "tes", "merged")
#: what a truncation's outer loss is measured on
OBJECTIVES = ("train", "valid")
PARALLEL = ("processes", "single")

#: fields that define what a run computes: a resumed run must agree on all of them
IDENTITY_FIELDS = (
    "family",
    "learner",
    "learner_cfg",
    "estimator",
    "seed",
    "pairs",
    "arch_groups",
    "truncation",
    "min_horizon",
    "max_horizon",
    "sigma",
    "lr",
    "beta1",
    "beta2",
    "adam_eps",
    "clip",
    "heldout_tasks",
)
#: identity fields added later: in a run's identity only when not at this default, so runs
#: made before them keep their ids and resume
LATER_IDENTITY_DEFAULTS: dict[str, Any] = {"objective": "train", "loss_floor": 1e-8}
#: the outer loss's clip (a non-finite or larger loss counts as this; a floor lies below it)
LOSS_CLIP = 10.0


@dataclass
class FamilyMetaTrainConfig:
    """``lopt meta-train family=NAME``: meta-train a learned optimizer on a task family with the
    batched engine (:mod:`harness.meta.family`).

    Attributes:
        family: the registered task family the inner problems are sampled from.
        learner: the registered learner family to train; it must run batched (``batched_init``
            and ``batched_step``).
        learner_cfg: the learner's settings (``learner_cfg.NAME=VALUE``).
        estimator: ``pes`` (persistent ES: unbiased over the whole inner run), ``tes``
            (antithetic ES on each truncation: biased towards short horizons) or ``merged``
            (the paper's: truncated ES and the reparameterisation gradient of each truncation,
            merged per element by inverse variance).
        objective: ``train`` (the outer loss on the member task's training minibatches: speed)
            or ``valid`` (on its validation minibatches, the paper's outer-valid:
            generalisation); the inner steps train on training minibatches either way.
        loss_floor: a truncation's outer loss is the mean of ``log(clamp(loss, loss_floor,
            10))``: a minibatch loss below the floor earns nothing more. The default 1e-8
            rewards driving the training loss towards zero, which a learned optimizer can buy by
            inflating the weights after the fit (docs/family-evaluation.md); a floor such as
            1e-4 stops rewarding that.
        outer_steps: outer steps (Adam steps on theta) to reach.
        out: the folder for ``family_state.pt``, ``inner_state.pt``, ``lopt.safetensors``,
            ``meta_log.csv`` and ``config.json``.
        seed: fixes theta's initialisation and every random draw (tasks, inits, horizons,
            perturbations, the held-out set), per (outer step, pair).
        pairs: antithetic pairs (inner problems) per outer step, over all workers.
        arch_groups: the pairs share this many architectures at a time (pair p in group
            p % arch_groups; each group draws a new one every max_horizon / truncation outer
            steps), so the engine batches them (0: every inner run draws its own).
        truncation: inner steps per truncation (every horizon is a multiple of it).
        min_horizon, max_horizon: inner horizons are drawn log-uniformly in this range and
            rounded to a multiple of ``truncation``.
        sigma: standard deviation of the Gaussian perturbation of theta.
        lr, beta1, beta2, adam_eps: Adam on theta.
        clip: the gradient is clipped elementwise to [-clip, clip] before Adam.
        heldout_tasks: the fixed held-out set: tasks sampled on seeds no training draw uses, run
            over their whole horizon with the current theta.
        eval_every: evaluate on the held-out set every this many outer steps (and at the start
            and the end of every chunk; 0: never).
        checkpoint_every: write the state and the log every this many outer steps.
        parallel: ``processes`` (``workers`` torch.distributed processes, gloo) or ``single``.
        workers: processes for ``parallel=processes`` (one per core).
        max_seconds: stop (and checkpoint) once this call has meta-trained this long (None: no
            limit); rerunning the same command continues for another chunk.
        resume: continue from ``out`` when it holds this run (false: start it again).
        progress: a bar on a terminal, else a line every ``checkpoint_every`` outer steps.
        plugins: local modules to import first (families or learners registered by plugins).
    """

    family: str = "mlp_mix"
    learner: str = "nominal_mlp"
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    estimator: str = "pes"
    objective: str = "train"
    loss_floor: float = 1e-8
    outer_steps: int = 1000
    out: str = "outputs/meta/family"
    seed: int = 0
    pairs: int = 32
    arch_groups: int = 4
    truncation: int = 50
    min_horizon: int = 100
    max_horizon: int = 2000
    sigma: float = 0.01
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    clip: float = 0.1
    heldout_tasks: int = 32
    eval_every: int = 25
    checkpoint_every: int = 10
    parallel: str = "processes"
    workers: int = 2
    max_seconds: Optional[float] = None  # noqa: UP045
    resume: bool = True
    progress: bool = True
    plugins: list[str] = field(default_factory=list)

    def check(self) -> FamilyMetaTrainConfig:
        """Raise a one-line ``UsageError`` for the first invalid value; returns ``self``.

        Values only: the family and the learner are looked up by
        :func:`harness.resolve.resolve_family`."""
        one_of("estimator", self.estimator, FAMILY_ESTIMATORS)
        one_of("objective", self.objective, OBJECTIVES)
        one_of("parallel", self.parallel, PARALLEL)
        check_shared(self)
        if not 0 < self.loss_floor < LOSS_CLIP:
            raise UsageError(
                f"loss_floor must be > 0 and < {LOSS_CLIP:g} (the outer loss's clip); "
                f"got {self.loss_floor!r}"
            )
        for name in ("truncation", "min_horizon", "max_horizon", "heldout_tasks"):
            positive_int(name, getattr(self, name))
        integer("pairs", self.pairs, 2)
        integer("eval_every", self.eval_every, 0)
        integer("arch_groups", self.arch_groups, 0)
        if self.arch_groups > self.pairs:
            raise UsageError(
                f"arch_groups ({self.arch_groups}) must be <= pairs ({self.pairs}), or 0 (each "
                "inner run draws its own architecture)"
            )
        if self.min_horizon > self.max_horizon:
            raise UsageError(
                f"min_horizon ({self.min_horizon}) must be <= max_horizon ({self.max_horizon})"
            )
        if self.min_horizon < self.truncation:
            raise UsageError(
                f"min_horizon ({self.min_horizon}) must be >= truncation ({self.truncation}): "
                "every horizon is a whole number of truncations"
            )
        if self.parallel == "processes":
            check_workers(self.workers, self.pairs, "pairs", "one pair")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        data = dataclasses.asdict(self)
        data["plugins"] = list(self.plugins)
        data["learner_cfg"] = to_plain(self.learner_cfg)
        return data

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        data = self.to_dict()
        out = {name: data[name] for name in IDENTITY_FIELDS}
        for name, default in LATER_IDENTITY_DEFAULTS.items():
            if data[name] != default:
                out[name] = data[name]
        return out


def coerce_family_config(cfg: Any = None, **overrides: Any) -> FamilyMetaTrainConfig:
    """A checked :class:`FamilyMetaTrainConfig` from a config, a mapping or an OmegaConf node,
    updated with ``overrides``; unknown keys raise ``UsageError``."""
    data = config_data(cfg, FamilyMetaTrainConfig, "family meta-training")
    data.update(overrides)
    if isinstance(data.get("learner_cfg"), Mapping):
        data["learner_cfg"] = dict(data["learner_cfg"])
    typed = typed_fields(data, FamilyMetaTrainConfig, "meta-train family=...")
    return FamilyMetaTrainConfig(**typed).check()
