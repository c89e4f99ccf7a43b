"""The one place where the names in settings become objects.

The settings (:mod:`harness.settings`) are plain data, checked for values only (types, ranges,
choices from fixed lists). This module turns their names into the objects a run uses, once per
process, and is what every entrance calls (``lopt`` and its Python functions, the torchrun
workers, the pathology study, the tuning campaign):

* :func:`load_plugins`: the ``plugins=`` modules, each imported once per process;
* :func:`resolve_meta`: a :class:`~harness.settings.meta.MetaTrainConfig` -> :class:`MetaRun`
  (the task, the learner built once with its record, the estimator, the initial theta from
  ``init_from``, the run's identity and id);
* :func:`resolve_family`: a :class:`~harness.settings.family.FamilyMetaTrainConfig` ->
  :class:`FamilyRun` (the learner built once, checked to run batched; the family checked);
* :func:`build_task`, :func:`build_optimizer`, :func:`build_learner`, :func:`build_estimator`:
  one object each, for the entrances that need only that one (the Python API ``harness.run``
  builds its task and optimizer here, ``lopt tune`` and the tuning campaign their task, the
  pathology study its task and estimators, ``lopt select-snapshot`` its learner);
* the bench's runs (:class:`~harness.plan.RunPlan`, from ``lopt bench``, ``lopt suite`` and
  the tuning trials) are resolved by :func:`harness.plan.resolve_plan` (task class, optimizer
  built once, run id), which uses the same registry and this module's :func:`load_plugins`.

An unknown name or a setting the object refuses is a one-line ``UsageError``, raised before
anything is written. Checkpoints are read without executing code (``weights_only`` torch files
or safetensors: :mod:`optimizers.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError
from harness.util import to_plain

if TYPE_CHECKING:
    import torch

    from harness.meta.estimators import GradientEstimator
    from harness.settings.family import FamilyMetaTrainConfig
    from harness.settings.meta import MetaTrainConfig
    from tasks.base import Task

#: the plugin modules this process has imported through :func:`load_plugins`
_LOADED_PLUGINS: set[str] = set()


def load_plugins(modules: Iterable[str]) -> None:
    """Import the ``plugins=`` modules this process has not imported yet (their ``register_*``
    decorators run on import); an unimportable one is a one-line ``UsageError``."""
    from harness import registry

    new = [m for m in dict.fromkeys(modules) if m not in _LOADED_PLUGINS]
    if new:
        registry.load_plugin_modules(new)
        _LOADED_PLUGINS.update(new)


def build_learner(name: str, settings: dict[str, Any]) -> Any:
    """The learner family ``name`` with its ``settings`` (:func:`harness.registry.create_learner`:
    an unknown family or setting is a one-line ``UsageError``)."""
    from harness import registry

    return registry.create_learner(name, **settings)


def build_task(name: str, device: torch.device | str, settings: dict[str, Any]) -> Task:
    """The task ``name`` on ``device`` with its ``settings`` (:func:`harness.registry.create_task`:
    an unknown task or setting is a one-line ``UsageError``)."""
    from harness import registry

    return registry.create_task(name, device=device, **settings)


def build_optimizer(name: str, hparams: dict[str, Any]) -> Any:
    """The optimizer ``name`` with hyperparameters ``hparams`` (the others take their declared
    defaults; :func:`harness.registry.create_optimizer`)."""
    from harness import registry

    return registry.create_optimizer(name, **hparams)


def build_estimator(cfg: MetaTrainConfig) -> GradientEstimator:
    """The gradient estimator ``cfg`` names (``estimator``, ``sigma``, ``first_order``)."""
    from harness.meta.estimators import create_estimator

    return create_estimator(cfg.estimator, sigma=cfg.sigma, first_order=cfg.first_order)


@dataclass(frozen=True)
class MetaRun:
    """What a :class:`~harness.settings.meta.MetaTrainConfig` names, built once.

    Attributes:
        cfg: the checked settings.
        task: the task instance (on ``device``).
        learner: the learner family (:class:`optimizers.base.MetaLearnable`).
        record: ``learner.record()`` (what checkpoints store as the architecture).
        estimator: the gradient estimator (``estimator``, ``sigma``, ``first_order``).
        initial_theta: theta at outer step 0 from ``init_from`` (``(num_theta,)``), or None.
        identity: the fields a resumed run must share (``cfg.identity(record)``).
        run_id: ``meta-<task>-<estimator>-<objective>-s<seed>-<hash of identity>``.
    """

    cfg: MetaTrainConfig
    task: Task
    learner: Any
    record: dict[str, Any]
    estimator: GradientEstimator
    initial_theta: torch.Tensor | None
    identity: dict[str, Any]
    run_id: str


def resolve_meta(
    cfg: MetaTrainConfig,
    *,
    device: torch.device | str | None = None,
    task: Task | None = None,
) -> MetaRun:
    """Resolve ``cfg``'s names once: plugins, task (``task`` if given, else built on ``device``,
    default ``cfg.device``), learner, estimator, initial theta. One-line ``UsageError`` for an
    unknown name, a bad setting, an estimator that cannot run ``parallel=vmap``, an
    ``outer_from`` past the horizon or an ``init_from`` of another learner."""
    load_plugins(cfg.plugins)
    learner = build_learner(cfg.learner, cfg.learner_cfg)
    record, identity, run_id = meta_identity(cfg, learner)
    estimator = build_estimator(cfg)
    if cfg.parallel == "vmap" and not estimator.batchable:
        raise UsageError(f"estimator={cfg.estimator} runs loop or processes, not parallel=vmap")
    theta = initial_theta(cfg.init_from, cfg.learner, identity["learner_cfg"])
    if task is None:
        task = build_task(cfg.task, device if device is not None else cfg.device, cfg.task_cfg)
    horizon = cfg.horizon or task.default_steps
    if cfg.outer_from >= horizon:
        raise UsageError(
            f"outer_from ({cfg.outer_from}) must be below the horizon ({horizon}): "
            "no step would be evaluated"
        )
    return MetaRun(cfg, task, learner, record, estimator, theta, identity, run_id)


def meta_identity(cfg: MetaTrainConfig, learner: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The built ``learner``'s record, the run's identity (``cfg.identity`` of the plain record)
    and its run id: what a meta-training run saves with every checkpoint, computed once."""
    record = learner.record()
    identity = cfg.identity(to_plain(record))
    return record, identity, meta_run_id(cfg, identity)


def meta_run_id(cfg: MetaTrainConfig, identity: dict[str, Any]) -> str:
    """``meta-<task>-<estimator>-<objective>-s<seed>-<hash of the identity fields>``
    (``identity``: ``cfg.identity(learner_record)``)."""
    from harness.results.schema import definition_digest

    digest = definition_digest(identity)
    return f"meta-{cfg.task}-{cfg.estimator}-{cfg.objective}-s{cfg.seed}-{digest}"


def initial_theta(init_from: str | None, family: str, record: dict[str, Any]) -> Any:
    """theta at outer step 0 from the checkpoint ``init_from`` (path or shipped name; read
    without executing code), or None without it; ``UsageError`` if the checkpoint's learner is
    not ``family`` with the plain ``record``."""
    if init_from is None:
        return None
    from harness.registry import LEARNERS
    from optimizers.checkpoint import load_lopt_checkpoint

    loaded = load_lopt_checkpoint(init_from)
    theirs = to_plain(loaded.learner.record())
    same_family = LEARNERS.canonical(loaded.family) == LEARNERS.canonical(family)
    if not same_family or record != theirs:
        differ = sorted(k for k in set(record) | set(theirs) if record.get(k) != theirs.get(k))
        detail = f", {differ[0]}={theirs.get(differ[0])!r}" if differ else ""
        raise UsageError(
            f"init_from={init_from!r} holds a {loaded.family} learner{detail}; this run "
            f"trains {family}"
            + (f" with {differ[0]}={record.get(differ[0])!r}" if differ else "")
            + ": give the checkpoint's learner settings"
        )
    return loaded.theta


@dataclass(frozen=True)
class FamilyRun:
    """What a :class:`~harness.settings.family.FamilyMetaTrainConfig` names, built once.

    Attributes:
        cfg: the checked settings.
        learner: the learner (runs batched: ``batched_init``, ``batched_step``).
        record: ``learner.record()``.
        identity: the fields a resumed run must share (``cfg.identity()``).
        run_id: ``meta-family-<family>-<estimator>-s<seed>-<hash of identity>``.
    """

    cfg: FamilyMetaTrainConfig
    learner: Any
    record: dict[str, Any]
    identity: dict[str, Any]
    run_id: str


def resolve_family(cfg: FamilyMetaTrainConfig) -> FamilyRun:
    """Resolve ``cfg``'s names once: plugins, the task family (registered), the learner (built
    once; it must run batched). One-line ``UsageError`` otherwise."""
    from harness.meta.family.problems import check_family

    load_plugins(cfg.plugins)
    check_family(cfg.family)
    learner = build_learner(cfg.learner, cfg.learner_cfg)
    for method in ("batched_init", "batched_step"):
        if not callable(getattr(learner, method, None)):
            raise UsageError(
                f"learner {cfg.learner} has no {method}: family meta-training needs a "
                "learner that runs batched (e.g. nominal_mlp)"
            )
    identity = cfg.identity()
    return FamilyRun(cfg, learner, learner.record(), identity, family_run_id(cfg, identity))


def family_run_id(cfg: FamilyMetaTrainConfig, identity: dict[str, Any]) -> str:
    """``meta-family-<family>-<estimator>-s<seed>-<hash of the identity fields>``
    (``identity``: ``cfg.identity()``)."""
    from harness.results.schema import definition_digest

    digest = definition_digest(identity)
    return f"meta-family-{cfg.family}-{cfg.estimator}-s{cfg.seed}-{digest}"
