"""``MetaTrainConfig``: every option of ``lopt meta-train``, with its default and its check;
:class:`MetaTrainCommandConfig`, the command's Hydra form (the task as a config group).

A plain dataclass (``Optional[...]`` for nullable fields, lists for sequences), so it is also a
Hydra structured config. :func:`coerce_config` turns a Hydra/OmegaConf node or a dict into a
checked :class:`MetaTrainConfig`; :meth:`MetaTrainConfig.check` raises one-line
``UsageError``s. Plain data, checked for values only: :func:`harness.resolve.resolve_meta` turns
its names into objects. The defaults and the measurements behind them are in docs/meta-training.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.settings.outer import check_shared, check_workers
from harness.settings.validate import (
    MISSING,
    config_data,
    fraction,
    integer,
    one_of,
    positive_int,
    typed_fields,
)
from harness.util import to_plain

ESTIMATORS = ("merged", "rp", "es", "pes")  # harness.meta.estimators.ESTIMATORS, in this order
OBJECTIVES = ("train", "valid")
LOSSES = ("mean", "log", "log_mean", "final")
OUTER_DATA = ("fresh", "inner")
SCHEDULES = ("linear", "constant")
PARALLEL_MODES = ("processes", "loop", "vmap")

# Fields that define what a meta-training run computes: a resumed run must agree on all of them.
# The others (how long, how often to save, how to parallelise, display) may change on resume.
IDENTITY_FIELDS = (
    "task",
    "task_cfg",
    "learner",
    "learner_cfg",
    "estimator",
    "objective",
    "loss",
    "outer_every",
    "outer_data",
    "seed",
    "problems",
    "horizon",
    "outer_batches",
    "sigma",
    "first_order",
    "lr",
    "beta1",
    "beta2",
    "adam_eps",
    "clip",
    "schedule",
    "unroll_length",
    "min_unroll",
    "max_unroll",
    "ramp_steps",
    "jitter",
    "device",
)
#: settings of the paper's learner (family mlp) accepted at the top level, as before families
LEGACY_LEARNER_FIELDS = ("hidden_sizes", "second_moments")


# Hydra's structured configs need typing.Optional (OmegaConf 2.3 does not read PEP 604 unions).
@dataclass
class MetaTrainConfig:
    """``lopt meta-train``: meta-train a learned-optimizer family on one task.

    Attributes:
        task: the registered task the inner problems are drawn from.
        task_cfg: the task's settings (``task.batch_size=...`` on the command line).
        learner: the registered learner family to train (``mlp``: the paper's; ``hparams``:
            SGD with a learned learning rate and momentum; plugins add more).
        learner_cfg: the family's settings (on the command line
            ``+learner_cfg.hidden_sizes=[16,16]`` for ``mlp``, ``+learner_cfg.lr0=0.003`` for
            ``adam_residual``).
        estimator: ``merged`` (the paper's inverse-variance merge of ES and rp), ``rp``
            (reparameterisation gradient through the unrolls), ``es`` (antithetic ES on each
            truncation) or ``pes`` (persistent ES: unbiased over the whole inner run).
        objective: the outer loss's split: ``train`` (outer-train) or ``valid`` (outer-valid).
        loss: what the outer loss averages: ``mean`` (the clipped loss: the paper's), ``log``
            (its log: scale-free), ``log_mean`` (the log of each truncation's mean loss:
            scale-free and not fooled by spikes) or ``final`` (the loss at the end of the inner
            run only).
        outer_every: evaluate the outer loss after the truncation's last step and every this
            many steps before it (1: after every step, the paper's).
        outer_from: evaluate the outer loss only after inner steps later than this one (0: the
            whole run; 1000 of a 2,000-step horizon: its second half, for an objective on how
            low the loss is late in the run, which a speed target asks for). A truncation with
            no step past it has no outer loss and is not counted. Must be below the horizon.
        outer_data: ``fresh`` (K fresh outer batches per evaluation, the paper's) or ``inner``
            (objective train only: the loss of the next inner batch, which the next inner step
            computes anyway).
        outer_steps: the number of outer steps (Adam steps on theta) to reach.
        out: the folder for ``lopt.safetensors``, ``lopt_stepNNNNNN.safetensors``,
            ``trainer_state.pt``, ``meta_log.csv`` and ``config.json``.
        seed: fixes theta's initialisation and every random draw (inits, batches, perturbations,
            unroll lengths), per (outer step, problem), independently of the parallelism.
        problems: B, the inner problems (meta-examples) per outer step.
        horizon: steps of an inner run before it is reset (None: the task's default_steps).
        outer_batches: K, outer batches the loss is evaluated on after each inner step.
        sigma: standard deviation of the Gaussian perturbation of theta.
        first_order: drop the second-order terms (inner gradients as constants) in rp.
        lr, beta1, beta2, adam_eps: Adam on theta.
        clip: the merged gradient is clipped elementwise to [-clip, clip].
        schedule: ``linear`` (unroll length from min_unroll to max_unroll over ramp_steps outer
            steps, times U(1 - jitter, 1 + jitter)) or ``constant`` (unroll_length).
        unroll_length: the constant schedule's length.
        min_unroll, max_unroll, ramp_steps, jitter: the linear schedule (ramp_steps None:
            outer_steps). Every length is capped by the steps left in the inner run.
        parallel: ``processes`` (torch.distributed workers, launched with torchrun; gloo on the
            CPU, NCCL on GPUs), ``loop`` (one process, a Python loop over the problems) or
            ``vmap`` (one process, torch.func.vmap over the problems).
        workers: processes for ``parallel=processes`` (on this machine: one per core).
        threads: torch threads per process (None: 1 per worker process; torch's default in one
            process).
        device: ``cpu`` or ``cuda`` (with processes, rank r uses cuda:LOCAL_RANK).
        checkpoint_every: write the checkpoints and the log every this many outer steps.
        eval_every: run the current theta for the whole horizon on ``eval_seeds`` fresh seeds
            every this many outer steps and log its final train and valid losses (None: at
            every checkpoint; 0: never).
        eval_seeds: seeds of that held-out evaluation.
        resume: continue from ``out/trainer_state.pt`` when it exists (false: start again).
        max_seconds: stop (and checkpoint) once this call has meta-trained this long (None: no
            limit); rerunning the same command continues for another chunk.
        progress: show a progress bar (None: on a terminal, else plain lines; false: nothing).
        plugins: local modules to import first (tasks registered by plugins; each worker
            process imports them too).
        init_from: a learned-optimizer checkpoint (path or shipped name) whose theta starts
            the run instead of the family's initialisation (None); its learner family and
            settings must be this run's. For a curriculum: continue what one estimator learned
            with another (truncated ES, then whole-run ES).
    """

    task: str = "mnist5k_cnn16"
    task_cfg: dict[str, Any] = field(default_factory=dict)
    learner: str = "mlp"
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    estimator: str = "merged"
    objective: str = "train"
    loss: str = "mean"
    outer_every: int = 1
    outer_from: int = 0
    outer_data: str = "fresh"
    outer_steps: int = 1000
    out: str = "outputs/meta"
    seed: int = 0
    problems: int = 8
    horizon: Optional[int] = None  # noqa: UP045
    outer_batches: int = 5
    sigma: float = 0.01
    first_order: bool = False
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    adam_eps: float = 1e-8
    clip: float = 0.1
    schedule: str = "linear"
    unroll_length: int = 20
    min_unroll: int = 10
    max_unroll: int = 50
    ramp_steps: Optional[int] = None  # noqa: UP045
    jitter: float = 0.2
    parallel: str = "processes"
    workers: int = 2
    threads: Optional[int] = None  # noqa: UP045
    device: str = "cpu"
    checkpoint_every: int = 50
    eval_every: Optional[int] = None  # noqa: UP045
    eval_seeds: int = 2
    resume: bool = True
    max_seconds: Optional[float] = None  # noqa: UP045
    progress: Optional[bool] = None  # noqa: UP045
    plugins: list[str] = field(default_factory=list)
    init_from: Optional[str] = None  # noqa: UP045

    def check(self) -> MetaTrainConfig:
        """Raise a one-line ``UsageError`` for the first invalid value; returns ``self``.

        Values only: the task, learner, estimator and ``init_from`` are looked up by
        :func:`harness.resolve.resolve_meta`."""
        one_of("estimator", self.estimator, ESTIMATORS)
        one_of("objective", self.objective, OBJECTIVES)
        one_of("loss", self.loss, LOSSES)
        one_of("outer_data", self.outer_data, OUTER_DATA)
        one_of("schedule", self.schedule, SCHEDULES)
        one_of("parallel", self.parallel, PARALLEL_MODES)
        check_shared(self)
        for name in ("outer_batches", "unroll_length", "min_unroll", "max_unroll"):
            positive_int(name, getattr(self, name))
        for name in ("outer_every", "eval_seeds"):
            positive_int(name, getattr(self, name))
        integer("outer_from", self.outer_from, 0)
        integer("problems", self.problems, 2)
        for name in ("horizon", "ramp_steps", "threads"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.eval_every is not None:
            integer("eval_every", self.eval_every, 0)
        if self.outer_data == "inner" and self.objective != "train":
            raise UsageError(
                "outer_data=inner reuses the training batches: it needs objective=train "
                f"(got objective={self.objective}); use outer_data=fresh"
            )
        if self.parallel == "vmap" and (
            self.outer_every != 1
            or self.outer_from != 0
            or self.outer_data != "fresh"
            or self.loss == "final"
        ):
            raise UsageError(
                "parallel=vmap needs outer_every=1, outer_from=0, outer_data=fresh and loss "
                "mean or log; "
                "use parallel=loop or processes"
            )
        if self.min_unroll > self.max_unroll:
            raise UsageError(
                f"min_unroll ({self.min_unroll}) must be <= max_unroll ({self.max_unroll})"
            )
        fraction("jitter", self.jitter)
        if self.parallel == "processes":
            check_workers(self.workers, self.problems, "problems", "one inner problem")
        if self.horizon is not None and self.outer_from >= self.horizon:
            raise UsageError(
                f"outer_from ({self.outer_from}) must be below the horizon ({self.horizon}): "
                "no step would be evaluated"
            )
        for key in ("device",):
            if key in self.task_cfg:
                raise UsageError("set the device with device=..., not task.device")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        data = dataclasses.asdict(self)
        data["plugins"] = list(self.plugins)
        data["task_cfg"] = dict(self.task_cfg)
        data["learner_cfg"] = to_plain(self.learner_cfg)
        return data

    def identity(self, learner_record: Mapping[str, Any]) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues; ``learner_record`` is
        the built learner's ``record()`` as plain data (its settings with their defaults filled
        in: :attr:`harness.resolve.MetaRun.record`), which stands for ``learner_cfg``."""
        data = self.to_dict()
        data["learner_cfg"] = to_plain(dict(learner_record))
        identity = {name: data[name] for name in IDENTITY_FIELDS}
        # only when set: runs from before these fields keep their identity
        if self.outer_from:
            identity["outer_from"] = self.outer_from
        if self.init_from is not None:
            identity["init_from"] = str(self.init_from)
        return identity


def coerce_config(cfg: Any = None, **overrides: Any) -> MetaTrainConfig:
    """A checked :class:`MetaTrainConfig` from a ``MetaTrainConfig``, a mapping or an OmegaConf
    node, updated with ``overrides``.

    A Hydra task group node (``{"name": NAME, **settings}`` under ``task``) is accepted too: its
    name becomes ``task`` and its other entries ``task_cfg``. Unknown keys raise ``UsageError``.
    """
    data = config_data(cfg, MetaTrainConfig, "meta-training")
    data.update(overrides)
    legacy = {k: data.pop(k) for k in LEGACY_LEARNER_FIELDS if k in data}
    if legacy:  # configs from before learner families: settings of the paper's MLP
        if data.get("learner", "mlp") != "mlp":
            raise UsageError(
                f"{', '.join(legacy)} are settings of learner=mlp; give them as learner_cfg.NAME"
            )
        data["learner_cfg"] = {**legacy, **dict(data.get("learner_cfg") or {})}
    task = data.get("task")
    if isinstance(task, Mapping):
        settings = {k: v for k, v in task.items() if k != "name"}
        if "name" not in task:
            raise UsageError("the task node needs a name")
        data["task"] = task["name"]
        data["task_cfg"] = {**settings, **dict(data.get("task_cfg") or {})}
    typed = typed_fields(data, MetaTrainConfig, "meta-train")
    return MetaTrainConfig(**typed).check()


@dataclass
class MetaTrainCommandConfig(MetaTrainConfig):
    """``lopt meta-train``: MetaTrainConfig with the task as a config group (``task=NAME``,
    ``task.SETTING=VALUE``)."""

    defaults: list[Any] = field(default_factory=lambda: [{"task": "mnist5k_cnn16"}, "_self_"])
    task: Any = MISSING
