"""Inner problems with persistent state, their truncated unrolls, resets and unroll schedules.

In the vocabulary of learned_optimization this module is the *TruncatedStep*: it owns the inner
state and knows how to advance it by one truncation; it knows nothing about estimators.

* An inner problem is one training run of the task's model, driven by the learned optimizer. Its
  :class:`InnerState` (parameters, accumulators, inner step ``t``, and ``instance``, the number
  of resets so far) persists across truncations; autograd history never does: every truncation
  starts from detached tensors, so memory stays flat however long meta-training runs.
* Problem ``i`` of ``B`` starts at inner step ``floor(i * horizon / B)`` (fresh parameters, zero
  accumulators), so the batch covers the whole horizon from the first outer step (the
  ``random_initial_iteration_offset`` of learned_optimization, evenly spaced). After reaching
  ``horizon`` steps a problem is reset (new init, zero accumulators, ``t = 0``).
* Every random draw is a pure function of ``(seed, stream, ...)`` (:func:`derive_seed`): the
  initial parameters of ``(problem, instance)``, the batches of a truncation (by problem,
  instance and the inner step it starts at), the perturbation of ``(outer step, problem)`` and
  the unroll length jitter. So results do not depend on how problems are spread over processes,
  and a resumed run repeats an uninterrupted one exactly.
* An unroll feeds the learned optimizer ``min(loss, 10)``'s gradient; after each inner step it
  evaluates the loss of the new parameters on K fresh outer batches (train or valid split),
  clips each at 10 and averages over steps and batches: the outer loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from optimizers.learned import LearnedOptimizer
from tasks.base import Batch, Params, Task

LOSS_CLIP = 10.0

# random streams of derive_seed
STREAM_INIT = 1
STREAM_INNER_BATCHES = 2
STREAM_OUTER_BATCHES = 3
STREAM_PERTURBATION = 4
STREAM_JITTER = 5
STREAM_THETA = 6


def derive_seed(seed: int, stream: int, *keys: int) -> int:
    """A 48-bit seed that depends only on ``(seed, stream, *keys)`` (numpy's SeedSequence).

    48 bits: collisions are negligible, and tasks may still do arithmetic on the seed (the
    quadratic task's ``3 * seed + split``) without leaving int64.
    """
    words = np.random.SeedSequence([seed, stream, *keys]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) >> 16


# -- the state -------------------------------------------------------------------------------------
@dataclass
class InnerState:
    """One inner problem between truncations (all tensors detached).

    Attributes:
        params: the model's parameters.
        accumulators: the learned optimizer's ``(A, N)`` accumulators.
        step: inner step ``t``: updates applied in this inner run.
        instance: how many times this problem has been reset (fixes its initial parameters).
    """

    params: Params
    accumulators: torch.Tensor
    step: int
    instance: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (tensors moved to the CPU)."""
        return {
            "params": [p.detach().cpu() for p in self.params],
            "accumulators": self.accumulators.detach().cpu(),
            "step": self.step,
            "instance": self.instance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device) -> InnerState:
        return cls(
            params=tuple(p.to(device) for p in data["params"]),
            accumulators=data["accumulators"].to(device),
            step=int(data["step"]),
            instance=int(data["instance"]),
        )

    def is_finite(self) -> bool:
        return bool(
            all(torch.isfinite(p).all() for p in self.params)
            and torch.isfinite(self.accumulators).all()
        )


@dataclass
class TruncationData:
    """The batches of one truncation, shared by the +eps and -eps unrolls (common random
    numbers): ``inner[j]`` is the training batch of inner step j, ``outer[j]`` its K outer
    batches stacked (each component has a leading dimension of size K)."""

    inner: list[Batch]
    outer: list[Batch]

    @property
    def length(self) -> int:
        return len(self.inner)


# -- schedules -------------------------------------------------------------------------------------
class TruncationSchedule:
    """Unroll lengths: ``length(outer_step, problem)`` before the cap by the steps left."""

    def length(self, outer_step: int, problem: int) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantSchedule(TruncationSchedule):
    """Every unroll is ``unroll`` steps (capped by the steps left in the inner run)."""

    unroll: int

    def length(self, outer_step: int, problem: int) -> int:
        return self.unroll


@dataclass(frozen=True)
class LinearSchedule(TruncationSchedule):
    """``round((min + (max - min) * min(1, outer_step / ramp_steps)) * U(1 - jitter, 1 +
    jitter))``, at least 1; the uniform draw depends on ``(seed, outer_step, problem)``."""

    min_unroll: int
    max_unroll: int
    ramp_steps: int
    jitter: float
    seed: int

    def length(self, outer_step: int, problem: int) -> int:
        progress = min(1.0, outer_step / max(1, self.ramp_steps))
        base = self.min_unroll + (self.max_unroll - self.min_unroll) * progress
        if self.jitter:
            rng = np.random.default_rng(derive_seed(self.seed, STREAM_JITTER, outer_step, problem))
            base *= rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(1, round(base))


# -- the inner problems ----------------------------------------------------------------------------
class InnerProblems:
    """B inner problems of one task, driven by a learned optimizer (the TruncatedStep).

    Args:
        task: the task (its ``init_params``, ``batches`` and ``loss`` are the whole model).
        lopt: the learned optimizer; unrolls call ``lopt.apply(theta, ...)``, the function the
            harness runner calls through ``update``.
        num_problems: B.
        horizon: steps of an inner run.
        outer_batches: K.
        objective: the outer loss's split, ``train`` or ``valid``.
        seed: the meta-training seed (see :func:`derive_seed`).
    """

    def __init__(
        self,
        task: Task,
        lopt: LearnedOptimizer,
        *,
        num_problems: int,
        horizon: int,
        outer_batches: int,
        objective: str,
        seed: int,
    ) -> None:
        self.task = task
        self.lopt = lopt
        self.num_problems = num_problems
        self.horizon = horizon
        self.outer_batches = outer_batches
        self.objective = objective
        self.seed = seed

    # -- states -----------------------------------------------------------------------------------
    def fresh_state(self, problem: int, instance: int, step: int = 0) -> InnerState:
        """New initial parameters for ``(problem, instance)``, zero accumulators, at ``step``."""
        params = self.task.init_params(derive_seed(self.seed, STREAM_INIT, problem, instance))
        accumulators = self.lopt.init(params)["accumulators"]
        return InnerState(params=params, accumulators=accumulators, step=step, instance=instance)

    def initial_state(self, problem: int) -> InnerState:
        """Problem ``problem``'s state at the first outer step: staggered start."""
        return self.fresh_state(problem, 0, step=problem * self.horizon // self.num_problems)

    def advance(self, problem: int, final: InnerState) -> tuple[InnerState, bool]:
        """The state after a truncation: ``final``, or a reset one when ``final`` reached the
        horizon or is not finite. Returns ``(state, was_reset)``."""
        if final.step >= self.horizon or not final.is_finite():
            return self.fresh_state(problem, final.instance + 1), True
        return final, False

    # -- data -------------------------------------------------------------------------------------
    def data(self, problem: int, state: InnerState, length: int) -> TruncationData:
        """The batches of a truncation of ``length`` steps from ``state``: a pure function of
        ``(seed, problem, state.instance, state.step)``."""
        keys = (problem, state.instance, state.step)
        inner = self.task.batches("train", derive_seed(self.seed, STREAM_INNER_BATCHES, *keys))
        outer = self.task.batches(
            self.objective, derive_seed(self.seed, STREAM_OUTER_BATCHES, *keys)
        )
        k = self.outer_batches
        return TruncationData(
            inner=list(islice(inner, length)),
            outer=[_stack(list(islice(outer, k))) for _ in range(length)],
        )

    def length_cap(self, state: InnerState) -> int:
        """Steps left in the inner run."""
        return max(1, self.horizon - state.step)

    # -- unrolls ----------------------------------------------------------------------------------
    def unroll(
        self,
        theta: torch.Tensor,
        state: InnerState,
        data: TruncationData,
        *,
        grad_mode: str,
    ) -> tuple[torch.Tensor, InnerState]:
        """Run the learned optimizer with ``theta`` for ``data.length`` steps from ``state``.

        Args:
            grad_mode: ``second`` (the outer loss is differentiable in ``theta``, through the
                inner gradients too), ``first`` (inner gradients treated as constants) or
                ``none`` (no graph: the plain training steps, as the harness runner does them).

        Returns ``(outer_loss, final_state)``: the mean over steps and K outer batches of the
        clipped outer losses (a 0-d tensor, differentiable in ``theta`` unless ``none``), and
        the final state, detached.
        """
        if grad_mode not in ("second", "first", "none"):
            raise ValueError(f"grad_mode must be second, first or none, got {grad_mode!r}")
        track = grad_mode != "none"
        task, lopt = self.task, self.lopt
        params: Params = tuple(p.detach().requires_grad_(True) for p in state.params)
        opt_state = {"step": state.step, "accumulators": state.accumulators.detach()}
        total: torch.Tensor | float = 0.0
        for inner_batch, outer_batches in zip(data.inner, data.outer, strict=True):
            with torch.enable_grad():
                if not track:
                    params = tuple(p.detach().requires_grad_(True) for p in params)
                loss = task.loss(params, inner_batch).clamp(max=LOSS_CLIP)
                grads = torch.autograd.grad(loss, params, create_graph=grad_mode == "second")
            with torch.set_grad_enabled(track):
                params, opt_state = lopt.apply(
                    theta, grads, opt_state, params, reuse_buffers=not track
                )
                total = total + outer_loss_at(task, params, outer_batches)
        outer = torch.as_tensor(total) / data.length
        final = InnerState(
            params=tuple(p.detach() for p in params),
            accumulators=opt_state["accumulators"].detach(),
            step=opt_state["step"],
            instance=state.instance,
        )
        return outer, final

    def unroll_batched(
        self,
        thetas: torch.Tensor,
        states: Sequence[InnerState],
        datas: Sequence[TruncationData],
        *,
        grad_mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[InnerState]]:
        """:meth:`unroll` of ``len(states)`` problems at once, with ``torch.func.vmap``.

        ``thetas`` is ``(M, P)``: one theta per problem. Unrolls of different lengths run to
        the longest; the extra steps of shorter ones are masked out (their state and outer loss
        are left alone). With ``grad_mode`` ``second`` or ``first`` the gradient of each outer
        loss in its theta comes back too (``(M, P)``, by ``torch.func.grad``; ``first`` detaches
        the inner gradients); with ``none``, None.

        Returns ``(outer_losses (M,), grads or None, final_states)``.
        """
        from torch.func import grad, grad_and_value, vmap

        if grad_mode not in ("second", "first", "none"):
            raise ValueError(f"grad_mode must be second, first or none, got {grad_mode!r}")
        task, lopt = self.task, self.lopt
        lengths = [d.length for d in datas]
        longest = max(lengths)
        device = thetas.device
        mask = torch.tensor(
            [[j < n for j in range(longest)] for n in lengths], dtype=torch.bool, device=device
        )
        inner = _stack_padded([d.inner for d in datas], longest)
        outer = _stack_padded([d.outer for d in datas], longest)
        params = tuple(torch.stack(ps) for ps in zip(*(s.params for s in states), strict=True))
        accumulators = torch.stack([s.accumulators for s in states])
        dtype = accumulators.dtype
        steps = torch.tensor([float(s.step) for s in states], dtype=dtype, device=device)
        first_order = grad_mode == "first"

        def one_problem(theta, params, accumulators, step, inner, outer, mask):  # type: ignore[no-untyped-def]
            total = torch.zeros((), dtype=dtype, device=device)
            for j in range(longest):
                batch = tuple(x[j] for x in inner)

                def inner_loss(p, batch=batch):  # type: ignore[no-untyped-def]
                    return task.loss(p, batch).clamp(max=LOSS_CLIP)

                grads = grad(inner_loss)(params)
                if first_order:
                    grads = tuple(g.detach() for g in grads)
                new_params, new_state = lopt.apply(
                    theta, grads, {"step": step, "accumulators": accumulators}, params
                )
                active = mask[j]
                params = tuple(
                    torch.where(active, n, o) for n, o in zip(new_params, params, strict=True)
                )
                accumulators = torch.where(active, new_state["accumulators"], accumulators)
                step = step + active.to(dtype)
                loss = outer_loss_at(task, params, tuple(x[j] for x in outer))
                total = total + torch.where(active, loss, torch.zeros_like(loss))
            return total / mask.sum(), (params, accumulators)

        args = (thetas, params, accumulators, steps, inner, outer, mask)
        if grad_mode == "none":
            with torch.no_grad():
                losses, (final_params, final_acc) = vmap(one_problem)(*args)
            grads = None
        else:
            grads, (losses, (final_params, final_acc)) = vmap(
                grad_and_value(one_problem, has_aux=True)
            )(*args)
            grads = grads.detach()
        finals = [
            InnerState(
                params=tuple(p[i].detach() for p in final_params),
                accumulators=final_acc[i].detach(),
                step=s.step + n,
                instance=s.instance,
            )
            for i, (s, n) in enumerate(zip(states, lengths, strict=True))
        ]
        return losses.detach(), grads, finals


def _stack(batches: Sequence[Batch]) -> Batch:
    """Batches with the same shapes -> one batch with a new leading dimension."""
    return tuple(torch.stack(parts) for parts in zip(*batches, strict=True))


def _stack_padded(per_problem: Sequence[Sequence[Batch]], length: int) -> Batch:
    """``(M, length, ...)`` per batch component; shorter sequences repeat their last batch."""
    padded = [list(seq) + [seq[-1]] * (length - len(seq)) for seq in per_problem]
    return _stack([_stack(seq) for seq in padded])


def outer_loss_at(task: Task, params: Params, batches: Batch) -> torch.Tensor:
    """The outer loss of ``params`` at one inner step: the mean over the K stacked ``batches``
    of the task's loss clipped at 10 (each batch clipped on its own).

    The K losses come from one ``torch.func.vmap`` of ``task.loss`` over the batches (the model
    sees one batch of K times the size: faster than K calls, forward and backward).
    """
    if batches[0].shape[0] == 1:
        return task.loss(params, tuple(x[0] for x in batches)).clamp(max=LOSS_CLIP)
    losses = torch.func.vmap(task.loss, in_dims=(None, 0))(params, batches)
    return losses.clamp(max=LOSS_CLIP).mean()


def schedule_from_config(cfg: Any, outer_steps: int) -> TruncationSchedule:
    """The schedule a :class:`harness.meta.config.MetaTrainConfig` describes."""
    if cfg.schedule == "constant":
        return ConstantSchedule(cfg.unroll_length)
    return LinearSchedule(
        min_unroll=cfg.min_unroll,
        max_unroll=cfg.max_unroll,
        ramp_steps=cfg.ramp_steps if cfg.ramp_steps is not None else outer_steps,
        jitter=cfg.jitter,
        seed=cfg.seed,
    )
