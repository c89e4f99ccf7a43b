"""``MetaTrainConfig``: every option of ``lopt meta-train``, with its default.

A plain dataclass (``Optional[...]`` for nullable fields, lists for sequences), so it is also a
Hydra structured config. :func:`coerce_config` turns a Hydra/OmegaConf node or a dict into a
checked :class:`MetaTrainConfig`; :meth:`MetaTrainConfig.check` raises one-line
``UsageError``s. The defaults and the measurements behind them are in docs/meta-training.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.errors import UsageError
from harness.typed_config import config_data, typed_fields

ESTIMATORS = ("merged", "rp", "es")
OBJECTIVES = ("train", "valid")
SCHEDULES = ("linear", "constant")
PARALLEL_MODES = ("processes", "loop", "vmap")

# Fields that define what a meta-training run computes: a resumed run must agree on all of them.
# The others (how long, how often to save, how to parallelise, display) may change on resume.
IDENTITY_FIELDS = (
    "task",
    "task_cfg",
    "estimator",
    "objective",
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
    "hidden_sizes",
    "second_moments",
    "device",
)


# Hydra's structured configs need typing.Optional (OmegaConf 2.3 does not read PEP 604 unions).
@dataclass
class MetaTrainConfig:
    """``lopt meta-train``: meta-train the learned optimizer on one task.

    Attributes:
        task: the registered task the inner problems are drawn from.
        task_cfg: the task's settings (``task.batch_size=...`` on the command line).
        estimator: ``merged`` (the paper's inverse-variance merge of ES and rp), ``rp``
            (reparameterisation gradient through the unrolls) or ``es`` (antithetic ES).
        objective: the outer loss's split: ``train`` (outer-train) or ``valid`` (outer-valid).
        outer_steps: the number of outer steps (Adam steps on theta) to reach.
        out: the folder for ``lopt.pt``, ``lopt_stepNNNNNN.pt``, ``trainer_state.pt``,
            ``meta_log.csv`` and ``config.json``.
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
        hidden_sizes: the MLP's hidden widths.
        second_moments: add the second-moment features (31 inputs instead of 19).
        parallel: ``processes`` (torch.distributed workers, launched with torchrun; gloo on the
            CPU, NCCL on GPUs), ``loop`` (one process, a Python loop over the problems) or
            ``vmap`` (one process, torch.func.vmap over the problems).
        workers: processes for ``parallel=processes`` (on this machine: one per core).
        threads: torch threads per process (None: 1 per worker process; torch's default in one
            process).
        device: ``cpu`` or ``cuda`` (with processes, rank r uses cuda:LOCAL_RANK).
        checkpoint_every: write the checkpoints and the log every this many outer steps.
        resume: continue from ``out/trainer_state.pt`` when it exists (false: start again).
        max_seconds: stop (and checkpoint) once meta-training has run this long (None: no limit).
        progress: show a progress bar (None: when stderr is a terminal).
        plugins: local modules to import first (tasks registered by plugins; each worker
            process imports them too).
    """

    task: str = "mnist5k_cnn16"
    task_cfg: dict[str, Any] = field(default_factory=dict)
    estimator: str = "merged"
    objective: str = "train"
    outer_steps: int = 1000
    out: str = "results/meta"
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
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 32])
    second_moments: bool = False
    parallel: str = "processes"
    workers: int = 2
    threads: Optional[int] = None  # noqa: UP045
    device: str = "cpu"
    checkpoint_every: int = 50
    resume: bool = True
    max_seconds: Optional[float] = None  # noqa: UP045
    progress: Optional[bool] = None  # noqa: UP045
    plugins: list[str] = field(default_factory=list)

    def check(self) -> MetaTrainConfig:
        """Raise a one-line ``UsageError`` for the first invalid value; returns ``self``."""
        _one_of("estimator", self.estimator, ESTIMATORS)
        _one_of("objective", self.objective, OBJECTIVES)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("parallel", self.parallel, PARALLEL_MODES)
        for name in ("outer_steps", "outer_batches", "unroll_length", "min_unroll", "max_unroll"):
            _positive_int(name, getattr(self, name))
        for name in ("workers", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        _int(self.seed, "seed", minimum=0)
        _int(self.problems, "problems", minimum=2)
        for name in ("horizon", "ramp_steps", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.min_unroll > self.max_unroll:
            raise UsageError(
                f"min_unroll ({self.min_unroll}) must be <= max_unroll ({self.max_unroll})"
            )
        for name in ("sigma", "lr", "adam_eps", "clip"):
            _number(name, getattr(self, name), low=0.0, strict=True)
        for name in ("beta1", "beta2"):
            _number(name, getattr(self, name), low=0.0)
            if getattr(self, name) >= 1.0:
                raise UsageError(f"{name} must be >= 0 and < 1, got {getattr(self, name)}")
        _number("jitter", self.jitter, low=0.0)
        if self.jitter >= 1.0:
            raise UsageError(f"jitter must be >= 0 and < 1, got {self.jitter}")
        if self.max_seconds is not None:
            _number("max_seconds", self.max_seconds, low=0.0, strict=True)
        if self.parallel == "processes" and self.workers > self.problems:
            raise UsageError(
                f"workers ({self.workers}) must be <= problems ({self.problems}): each worker "
                "needs at least one inner problem"
            )
        if not isinstance(self.task_cfg, dict):
            raise UsageError(f"task_cfg must be a mapping, got {self.task_cfg!r}")
        for key in ("device",):
            if key in self.task_cfg:
                raise UsageError("set the device with device=..., not task.device")
        from optimizers.learned import LOptArchitecture

        LOptArchitecture(hidden_sizes=tuple(self.hidden_sizes))
        if not str(self.out):
            raise UsageError("out must name a folder")
        return self

    def architecture(self) -> Any:
        """The :class:`optimizers.learned.LOptArchitecture` these settings describe."""
        from optimizers.learned import LOptArchitecture

        return LOptArchitecture(
            hidden_sizes=tuple(self.hidden_sizes), second_moments=self.second_moments
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        data = dataclasses.asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        data["plugins"] = list(self.plugins)
        data["task_cfg"] = dict(self.task_cfg)
        return data

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        data = self.to_dict()
        return {name: data[name] for name in IDENTITY_FIELDS}


def coerce_config(cfg: Any = None, **overrides: Any) -> MetaTrainConfig:
    """A checked :class:`MetaTrainConfig` from a ``MetaTrainConfig``, a mapping or an OmegaConf
    node, updated with ``overrides``.

    A Hydra task group node (``{"name": NAME, **settings}`` under ``task``) is accepted too: its
    name becomes ``task`` and its other entries ``task_cfg``. Unknown keys raise ``UsageError``.
    """
    data = config_data(cfg, MetaTrainConfig, "meta-training")
    data.update(overrides)
    task = data.get("task")
    if isinstance(task, Mapping):
        settings = {k: v for k, v in task.items() if k != "name"}
        if "name" not in task:
            raise UsageError("the task node needs a name")
        data["task"] = task["name"]
        data["task_cfg"] = {**settings, **dict(data.get("task_cfg") or {})}
    typed = typed_fields(data, MetaTrainConfig, "meta-train")
    return MetaTrainConfig(**typed).check()


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    _int(value, name, 1)


def _number(name: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise UsageError(
            f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
        )
