"""The one optimizer contract, shared by hand-designed and learned optimizers.

An optimizer is a pair of functions, as in optax, except that ``update`` returns the new
parameters rather than an increment::

    opt = create_optimizer("adam", lr=1e-3)
    state = opt.init(params)                            # params: tuple of tensors
    params, state = opt.update(grads, state, params)    # grads: same shapes as params

* ``params`` and ``grads`` are tuples of tensors with matching shapes, dtypes and devices.
* ``state`` is a dict; ``state["step"]`` is the number of updates applied so far (an int).
* ``update`` is pure for the built-ins: it never modifies its inputs, so it can be called inside
  autograd (learned optimizers and meta-training rely on this). Adapters around stateful code,
  such as :class:`TorchOptimizer`, set ``pure = False`` and update in place.

Hyperparameters are declared as data (:class:`HParam`): name, default, the values that are valid,
and the search space a tuner samples. ``Optimizer(**hparams)`` validates them, so a bad value fails
at construction with one line, never in the middle of a run.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from harness.errors import UsageError

Params = tuple[torch.Tensor, ...]
OptState = dict[str, Any]

HParamValue = float | int | bool | str


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, the values that are valid, and its search space.

    Attributes:
        name: the keyword the optimizer takes.
        default: the default value; its Python type (float, int, bool or str) is the
            hyperparameter's. Strings (e.g. a checkpoint path) are never tuned.
        help: one line for ``lopt list optimizers``.
        gt, ge, lt, le: bounds on valid values (strict and inclusive); ``None`` means unbounded.
        low, high, log: the search range a tuner samples (log-uniform when ``log``). Booleans are
            searched over ``(False, True)``.
        tune: whether the hyperparameter is in the optimizer's default search space.
    """

    name: str
    default: HParamValue
    help: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    tune: bool = False

    @property
    def type(self) -> type:
        """``bool``, ``int``, ``float`` or ``str``."""
        return type(self.default)

    def validate(self, value: Any, owner: str) -> HParamValue:
        """Return ``value`` converted to this hyperparameter's type, or raise ``UsageError``."""
        kind = self.type
        if kind is str:
            if not isinstance(value, str):
                raise UsageError(f"{owner}: {self.name} must be a string, got {value!r}")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{owner}: {self.name} must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{owner}: {self.name} must be a number, got {value!r}")
        if kind is int:
            if float(value) != int(value):
                raise UsageError(f"{owner}: {self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{owner}: {self.name} must be finite, got {value!r}")
        inside = (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )
        if not inside:
            raise UsageError(f"{owner}: {self.name} must be {self.valid_range()}, got {value!r}")
        return value

    def valid_range(self) -> str:
        """Human-readable valid values, e.g. ``> 0`` or ``>= 0 and < 1``."""
        parts = [
            f"{word} {bound:g}"
            for bound, word in ((self.gt, ">"), (self.ge, ">="), (self.lt, "<"), (self.le, "<="))
            if bound is not None
        ]
        return " and ".join(parts) if parts else "any value"

    def search_space(self) -> dict[str, Any]:
        """The search space as plain data: ``{"type", "low", "high", "log"}`` or choices."""
        if self.type is str:
            return {"type": "fixed", "value": self.default}
        if self.type is bool:
            return {"type": "categorical", "choices": [False, True]}
        return {"type": self.type.__name__, "low": self.low, "high": self.high, "log": self.log}


class Optimizer(ABC):
    """Base class of every optimizer plugin (see the module docstring for the contract).

    Subclasses declare ``hparam_specs`` and implement :meth:`init` and :meth:`update`; the
    validated hyperparameters are in ``self.hparams``. The registry sets ``name``.
    """

    name: ClassVar[str] = ""
    hparam_specs: ClassVar[tuple[HParam, ...]] = ()
    #: ``update`` never modifies its inputs and supports autograd through it.
    pure: ClassVar[bool] = True

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, HParamValue] = resolve_hparams(
            self.hparam_specs, hparams, owner=self.name or type(self).__name__
        )

    @abstractmethod
    def init(self, params: Params) -> OptState:
        """The state before the first update; ``state["step"] == 0``."""

    @abstractmethod
    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        """Apply one update; returns ``(new_params, new_state)`` with ``step`` incremented."""

    @classmethod
    def hparam(cls, name: str) -> HParam:
        """The declared hyperparameter called ``name``."""
        for spec in cls.hparam_specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @classmethod
    def defaults(cls) -> dict[str, HParamValue]:
        """The declared default of every hyperparameter."""
        return {spec.name: spec.default for spec in cls.hparam_specs}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def resolve_hparams(
    specs: Sequence[HParam], given: dict[str, Any], owner: str
) -> dict[str, HParamValue]:
    """Defaults overridden by ``given``, each validated; unknown names raise ``UsageError``."""
    known = {spec.name: spec for spec in specs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise UsageError(f"{owner} takes no hyperparameter {unknown[0]!r}; it takes: {allowed}")
    return {
        name: spec.validate(given.get(name, spec.default), owner) for name, spec in known.items()
    }


# -- the contract of learned optimizers -----------------------------------------------------------
@runtime_checkable
class Learner(Protocol):
    """A learned-optimizer family (a *learner*): what meta-training trains.

    One contract for learned optimizers, as learned_optimization's ``opt_fn(theta)``: a learner
    is the arithmetic of a learned optimizer without its meta-parameters, the update as a pure
    function of a flat ``theta``; **with ``theta`` fixed it is an ordinary optimizer** of the
    contract above, ``optimizers.learned.opt_fn(learner, theta)`` (a
    :class:`optimizers.learned.LearnedOptimizer`: its ``update`` is ``apply`` with that
    ``theta``). The runner, the torch.optim class
    (:class:`optimizers.torch_optim.TorchLearnedOptimizer`) and the plugin ``learned`` (a
    checkpoint of any family) all use that optimizer; meta-training (:mod:`harness.meta`) calls
    :meth:`apply` with a ``theta`` that requires gradients, or a perturbed one.

    Families register with :func:`harness.registry.register_learner` (``learner=NAME`` in
    ``lopt meta-train``); the registry sets ``family``. A learner is built from its settings,
    ``Family(**settings)``, and :meth:`record` returns those settings as plain data (stored in
    checkpoints with ``family``), so ``Family(**learner.record())`` rebuilds the same learner.

    Contract:

    * ``num_theta``: the size P of the flat, float32 meta-parameter vector ``theta`` ``(P,)``.
    * ``init_theta(seed)``: a fresh ``theta`` (CPU, float32), a pure function of ``seed``.
    * ``init(params)``: the optimizer state before the first update. Its layout is fixed:
      ``{"step": 0, NAME: tensor, ...}``; every entry but ``step`` is a tensor ``(..., N)`` whose
      last dimension runs over all N parameter elements, concatenated in order
      (:func:`optimizers.layout.param_layout`). Meta-training stores, detaches, stacks and
      checks them entry by entry; the torch.optim class keeps per-parameter views of them.
    * ``apply(theta, grads, state, params, *, reuse_buffers=False)`` -> ``(new_params,
      new_state)``, with ``new_state["step"] == state["step"] + 1``: pure (inputs untouched),
      differentiable in ``theta``, ``grads`` and ``params``, correct under ``torch.func.vmap``
      (a per-example ``theta``). ``reuse_buffers`` (only without autograd, outside vmap) may keep
      large intermediates between calls; the arithmetic must not change.
    * ``record()``: the settings as plain data (JSON-able).

    Optional: ``learning_rate(theta, step)``, a learned schedule's rate of update ``step``
    (1-based), shown in reports. Families that also run B problems at once in the batched
    meta-training engine add ``batched_init``/``batched_step``
    (:class:`harness.meta.batched.learners.BatchedLearner`).
    """

    family: ClassVar[str]

    @property
    def num_theta(self) -> int: ...

    def init_theta(self, seed: int) -> torch.Tensor: ...

    def init(self, params: Params) -> OptState: ...

    def apply(
        self,
        theta: torch.Tensor,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[Params, OptState]: ...

    def record(self) -> dict[str, Any]: ...


#: the old name of :class:`Learner`
MetaLearnable = Learner


# -- shared declarations ---------------------------------------------------------------------------
def learning_rate(default: float, high: float = 1.0) -> HParam:
    """The learning rate every built-in declares: > 0, searched log-uniformly in [1e-5, high]
    (``high`` is 1 except for plain SGD, whose best rate on normalised inputs can exceed 1)."""
    return HParam("lr", default, "learning rate", gt=0.0, low=1e-5, high=high, log=True, tune=True)


def weight_decay(default: float = 0.0, help: str = "L2 penalty added to the gradient") -> HParam:
    return HParam("weight_decay", default, help, ge=0.0, low=1e-6, high=1e-1, log=True)


def addcdiv(
    params: Params,
    numerators: Sequence[torch.Tensor],
    denominators: Sequence[torch.Tensor],
    value: float,
) -> Params:
    """``params + value * numerators / denominators`` as new tensors, differentiable.

    (The out-of-place ``torch._foreach_addcdiv`` has a broken backward in torch 2.13 for tensors
    whose first dimension is at most their position in the list; the in-place form on a copy
    does not.)
    """
    out = [p.clone() for p in params]
    torch._foreach_addcdiv_(out, list(numerators), list(denominators), value=value)
    return tuple(out)


# -- the adapter -----------------------------------------------------------------------------------
class TorchOptimizer(Optimizer):
    """Adapter: any ``torch.optim.Optimizer`` class behind the functional contract.

    Subclass it with ``optimizer_class`` and ``hparam_specs`` (each hyperparameter is passed to the
    torch optimizer under the same keyword), or call :meth:`wrap`::

        Adagrad = TorchOptimizer.wrap(torch.optim.Adagrad, learning_rate(1e-2))

    ``init`` makes leaf copies of ``params`` that the torch optimizer owns; ``update`` sets their
    ``.grad`` and calls ``step()``, so it updates in place (``pure = False``) and returns those same
    tensors. ``state["torch_optimizer"]`` is the wrapped optimizer, for its ``state_dict``.
    """

    optimizer_class: ClassVar[type[torch.optim.Optimizer]]
    pure: ClassVar[bool] = False

    @classmethod
    def wrap(
        cls, optimizer_class: type[torch.optim.Optimizer], *hparam_specs: HParam
    ) -> type[TorchOptimizer]:
        """A ``TorchOptimizer`` subclass for ``optimizer_class`` with the given hyperparameters."""
        doc = (inspect_first_line(optimizer_class) or optimizer_class.__name__) + " (torch.optim)"
        return type(
            optimizer_class.__name__,
            (cls,),
            {
                "optimizer_class": optimizer_class,
                "hparam_specs": tuple(hparam_specs),
                "__doc__": doc,
                "__module__": optimizer_class.__module__,
            },
        )

    def init(self, params: Params) -> OptState:
        owned = tuple(p.detach().clone().requires_grad_(True) for p in params)
        return {
            "step": 0,
            "torch_optimizer": self.optimizer_class(list(owned), **self.hparams),
            "params": owned,
        }

    def update(self, grads: Params, state: OptState, params: Params) -> tuple[Params, OptState]:
        owned: Params = state["params"]
        if params is not owned:
            with torch.no_grad():
                for mine, given in zip(owned, params, strict=True):
                    if mine is not given:
                        mine.copy_(given)
        for p, g in zip(owned, grads, strict=True):
            p.grad = g
        state["torch_optimizer"].step()
        for p in owned:
            p.grad = None
        return owned, {**state, "step": state["step"] + 1}


def inspect_first_line(obj: Any) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""
