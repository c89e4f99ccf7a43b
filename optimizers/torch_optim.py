"""A learned optimizer as a drop-in ``torch.optim.Optimizer`` (:class:`TorchLearnedOptimizer`,
old name :data:`LOpt`).

It serves any learner family (``metz_mlp``, ``adam_residual``, ``hparams``, plugins) from a
``lopt meta-train`` checkpoint, a shipped name, or a ``theta`` held in memory, and computes
exactly what the harness's functional :class:`~optimizers.learned.LearnedOptimizer` computes
(it calls that optimizer's ``update``), then applies what torch users expect of an optimizer:

* ``lr`` (default 1): a multiplier on the learned step, per parameter group. The learned
  optimizer proposes ``w'``; the group's parameters become ``w + lr * (w' - w)``. Its state
  (momenta, step count) advances the same whatever ``lr`` is, as Adam's moments do.
* ``weight_decay`` (default 0): decoupled weight decay, per group, scaled by ``lr`` as AdamW's
  is by its learning rate: ``w <- w + lr * ((w' - w) - weight_decay * w)``. At ``lr=1`` it is
  the fraction of each weight removed per step (AdamW's ``lr * weight_decay``: ``1e-4`` for
  AdamW at ``lr=1e-3, weight_decay=0.1``).
* parameter groups with their own ``lr`` and ``weight_decay``; every
  ``torch.optim.lr_scheduler`` changes the groups' ``lr`` (``CyclicLR`` and ``OneCycleLR`` with
  ``cycle_momentum=False``: there is no momentum hyperparameter to cycle, as for any optimizer
  without one);
* ``state_dict``/``load_state_dict`` round trip the state and the groups' settings.

No silent untrained default: ``TorchLearnedOptimizer(params)`` without a checkpoint or theta is
refused; ``checkpoint="untrained"`` asks for the untrained paper optimizer on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from harness.errors import UsageError
from optimizers.base import Learner
from optimizers.learned import LearnedOptimizer, MetzMLPArchitecture

#: what the errors call the class
NAME = "TorchLearnedOptimizer"
#: ``checkpoint=UNTRAINED`` selects the untrained paper optimizer (theta from seed 0).
UNTRAINED = "untrained"


def _check_setting(name: str, value: Any, where: str = "") -> float:
    """``value`` as a float, or ``UsageError`` unless it is a finite number >= 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise UsageError(f"{NAME}: {name}{where} must be a finite number >= 0, got {value!r}")
    return float(value)


class TorchLearnedOptimizer(torch.optim.Optimizer):
    """A learned optimizer as a ``torch.optim.Optimizer``, for any PyTorch training loop::

        opt = TorchLearnedOptimizer(model.parameters(), checkpoint="lopt_mnist5k_train")
        loss.backward(); opt.step(); opt.zero_grad()

    The learned update is computed over all parameters that have a gradient, all groups
    together (each family's features are per tensor or per element, so grouping changes
    nothing in it), then each group applies its ``lr`` and ``weight_decay`` (module docstring).
    Per-parameter state: ``step`` and one view per entry of the learner's state (for the
    paper's MLP ``accumulators``, ``(A, numel)``), views of one flat buffer per entry; the time
    features' ``t`` is the number of steps this optimizer has taken.

    Args:
        params: parameters or parameter groups (dicts that may set ``lr``, ``weight_decay``).
        checkpoint: a ``lopt meta-train`` checkpoint, a shipped name (``lopt list
            optimizers``), or ``"untrained"``; required unless ``theta`` is given.
        lr: the default multiplier on the learned step (>= 0; 1 = as meta-trained).
        weight_decay: the default decoupled weight decay (>= 0).
        theta, learner: meta-parameters given directly instead of a checkpoint (``learner``
            a :class:`optimizers.base.Learner` or a :class:`MetzMLPArchitecture`; default
            the paper's MLP).

    Raises ``UsageError`` (one line) for a missing or unreadable checkpoint, a negative or
    non-finite ``lr``/``weight_decay`` (also in a group) and a sparse gradient.
    """

    def __init__(
        self,
        params: Iterable[Any],
        checkpoint: str | None = None,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        *,
        theta: torch.Tensor | None = None,
        learner: Learner | MetzMLPArchitecture | None = None,
    ) -> None:
        defaults = {
            "lr": _check_setting("lr", lr),
            "weight_decay": _check_setting("weight_decay", weight_decay),
        }
        if theta is not None:
            if checkpoint:
                raise UsageError(f"give {NAME} a checkpoint or a theta, not both")
            functional = LearnedOptimizer.from_theta(theta, learner)
        elif not checkpoint:
            raise UsageError(
                f"{NAME} needs checkpoint=PATH (written by `lopt meta-train`) or a shipped name "
                "(`lopt list optimizers`, e.g. 'adam_residual_mnist5k_train'), or theta=...; "
                f"checkpoint={UNTRAINED!r} gives the untrained paper optimizer on purpose"
            )
        elif learner is not None:
            raise UsageError(
                f"give {NAME} a learner only with a theta (a checkpoint names its own)"
            )
        else:
            name = "" if checkpoint == UNTRAINED else str(checkpoint)
            functional = LearnedOptimizer(checkpoint=name)
        self.functional = functional
        self._flat_key: tuple[int, ...] | None = None
        self._flat_state: dict[str, torch.Tensor] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus the checks of the group's ``lr`` and ``weight_decay``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f" of parameter group {len(self.param_groups) - 1}"
        for name in ("lr", "weight_decay"):
            group[name] = _check_setting(name, group[name], where)

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, groups) plus the learned optimizer: copies and pickles
        of one keep working."""
        return {**super().__getstate__(), "functional": self.functional}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "functional" in state:  # not there when load_state_dict calls this
            self.functional = state.pop("functional")
        super().__setstate__(state)
        self._flat_key, self._flat_state = None, {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat_key = None  # loaded per-parameter tensors: rebuild the flat buffers

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter that has a ``.grad``; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grouped = [
            (group, [p for p in group["params"] if p.grad is not None])
            for group in self.param_groups
        ]
        params = [p for _, members in grouped for p in members]
        if not params:
            return loss
        if any(p.grad.is_sparse for p in params):
            raise UsageError(f"{NAME} does not take sparse gradients")
        flat = self._gather_state(params)
        step = max(self.state[p].get("step", 0) for p in params)
        proposed, new_state = self.functional.update(
            tuple(p.grad for p in params), {"step": step, **flat}, tuple(params)
        )
        start = 0
        for group, members in grouped:
            if not members:
                continue
            stop = start + len(members)
            self._apply(members, list(proposed[start:stop]), group)
            start = stop
        for name, buffer in flat.items():
            buffer.copy_(new_state[name])
        for p in params:
            self.state[p]["step"] = step + 1
        return loss

    @staticmethod
    def _apply(params: list[torch.Tensor], proposed: list[torch.Tensor], group: dict) -> None:
        """``w <- w + lr * ((w' - w) - weight_decay * w)`` for the group's parameters."""
        lr, decay = float(group["lr"]), float(group["weight_decay"])
        if lr == 1.0 and decay == 0.0:
            torch._foreach_copy_(params, proposed)
            return
        steps = torch._foreach_sub(proposed, params)  # the learned step, before any change
        if decay:
            torch._foreach_mul_(params, 1.0 - lr * decay)
        torch._foreach_add_(params, steps, alpha=lr)

    def _gather_state(self, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The learner's flat state tensors ``(..., N)`` whose column blocks are the
        per-parameter ``state[p][name]`` views (rebuilt when the set of parameters changes)."""
        key = tuple(id(p) for p in params)
        if key == self._flat_key:
            return self._flat_state
        fresh = self.functional.init(tuple(params))
        flat: dict[str, torch.Tensor] = {}
        for name, initial in fresh.items():
            if name == "step":
                continue
            blocks, offset = [], 0
            for p in params:
                block = initial[..., offset : offset + p.numel()]
                existing = self.state[p].get(name)
                if existing is not None and existing.shape == block.shape:
                    block = existing.to(device=block.device, dtype=block.dtype)
                blocks.append(block)
                offset += p.numel()
            flat[name] = torch.cat(blocks, dim=-1)
        for name, buffer in flat.items():
            offset = 0
            for p in params:
                self.state[p][name] = buffer[..., offset : offset + p.numel()]
                offset += p.numel()
        for p in params:
            self.state[p].setdefault("step", 0)
        self._flat_key, self._flat_state = key, flat
        return flat


#: the old name of :class:`TorchLearnedOptimizer`
LOpt = TorchLearnedOptimizer
