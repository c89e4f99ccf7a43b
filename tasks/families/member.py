"""A sampled :class:`~tasks.families.base.FamilyTask` as an ordinary task, and the family
registration that makes every member reachable as ``task=FAMILY task.member=SEED``.

:class:`SampledTask` is a :class:`tasks.classification.ClassificationTask`: its model is
:func:`build_model` (the same architecture the batched engine computes by hand), its parameters
are the optimizer's variables ``p_k`` of the family's rescaling (the model uses
``param_scale[k] * p_k``; ``init_params(seed)`` is the model's standard initialisation for
``seed`` divided by the scales), ``batches("train", seed)`` the usual shuffled epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from harness.errors import UsageError
from harness.registry import FAMILIES, TASKS
from tasks.base import Params
from tasks.classification import ClassificationTask, Splits
from tasks.families.base import Family, FamilyTask
from tasks.families.datasets import NUM_CLASSES, family_splits

T = TypeVar("T")


def activation_module(name: str) -> nn.Module:
    """The ``nn.Module`` of an activation name (``gelu`` is the exact, erf form)."""
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[name]()


def build_model(spec: FamilyTask) -> nn.Module:
    """A freshly initialised model of ``spec``'s architecture (global torch RNG); its
    parameters come in the order and shapes of ``spec.shapes``."""
    layers: list[nn.Module] = []
    if spec.kind == "mlp":
        layers.append(nn.Flatten())
        width = spec.input_size
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), activation_module(spec.activation)]
            width = hidden
        layers.append(nn.Linear(width, NUM_CLASSES))
    else:
        channels = 1
        for out in spec.hidden:
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1)]
            layers.append(activation_module(spec.activation))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES)]
    return nn.Sequential(*layers)


class SampledTask(ClassificationTask):
    """A sampled family member: its dataset, model, batch size and per-tensor rescaling."""

    name = "family_member"  # the registered task of each family overrides it
    default_steps = 1000

    def __init__(
        self, spec: FamilyTask, *, device: str | torch.device = "cpu", split_seed: int = 0
    ) -> None:
        self.spec = spec
        super().__init__(device=device, batch_size=spec.batch_size, split_seed=split_seed)
        self._scales = tuple(
            torch.tensor(s, dtype=torch.float32, device=self.device) for s in spec.param_scale
        )
        self._rescaled = any(s != 1.0 for s in spec.param_scale)

    def load_splits(self, split_seed: int) -> Splits:
        return family_splits(self.spec.dataset, split_seed)

    def build_model(self) -> nn.Module:
        return build_model(self.spec)

    def init_params(self, seed: int) -> Params:
        params = super().init_params(seed)
        if not self._rescaled:
            return params
        return tuple(p / s.to(p.dtype) for p, s in zip(params, self._scales, strict=True))

    def logits(self, params: Params, inputs: torch.Tensor) -> torch.Tensor:
        if self._rescaled:
            params = tuple(p * s.to(p.dtype) for p, s in zip(params, self._scales, strict=True))
        return super().logits(params, inputs)


def build_task(spec: FamilyTask, *, device: str = "cpu", split_seed: int = 0) -> SampledTask:
    """``spec`` as an ordinary :class:`tasks.base.Task`."""
    return SampledTask(spec, device=device, split_seed=split_seed)


def _check_seed(family: str, what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{family}: {what} must be an integer >= {low}, got {value!r}")
    return value


def member_task_class(name: str, family_cls: type[Family]) -> type[SampledTask]:
    """The task plugin of family ``name``: settings ``member`` (the member seed), ``arch`` (the
    architecture seed; -1: the member seed), ``split_seed`` and ``batch_size`` (None: the
    member's own)."""

    def __init__(
        self: SampledTask,
        *,
        device: str | torch.device = "cpu",
        member: int = 0,
        arch: int = -1,
        split_seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        _check_seed(name, "member", member, 0)
        _check_seed(name, "arch", arch, -1)
        spec = family_cls().sample(member, None if arch == -1 else arch)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise UsageError(
                    f"{name}: batch_size must be a positive integer (default: the member's "
                    f"own), got {batch_size!r}"
                )
            spec = dataclasses.replace(spec, batch_size=batch_size)
        SampledTask.__init__(self, spec, device=device, split_seed=split_seed)

    summary = (family_cls.__doc__ or name).strip().splitlines()[0]
    return type(
        f"{family_cls.__name__}Member",
        (SampledTask,),
        {
            "__init__": __init__,
            "__doc__": f"{summary.rstrip('.')}: one member, task.member=SEED",
            "__module__": family_cls.__module__,
            "default_steps": family_cls.default_steps,
        },
    )


def register_family(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`~tasks.families.base.Family` subclass as the family
    ``name`` (``sample_tasks(name, seeds)``) and as the task plugin ``task=name``."""
    register = FAMILIES.register(name)

    def decorator(factory: T) -> T:
        factory.family = name  # type: ignore[attr-defined]
        register(factory)
        TASKS.register(name)(member_task_class(name, factory))  # type: ignore[arg-type]
        return factory

    return decorator
