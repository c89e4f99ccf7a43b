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
  clips each at 10 and averages over steps and batches: the outer loss (the paper's).
* What the outer loss measures is an :class:`OuterObjective`: the split, the per-step value
  (``mean``: the clipped loss; ``log``: its log, scale-free; ``final``: the clipped loss after
  the last step of the inner run only), how often it is evaluated (every ``every`` steps,
  counted back from the truncation's last step) and on what data (``fresh``: K outer batches;
  ``inner``: for the train split, the loss of the next inner batch, which the next inner step
  computes anyway: no extra forward pass but one per truncation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from optimizers.base import Learner
from tasks.base import Batch, Params, Task

LOSS_CLIP = 10.0
#: the log objective's floor: log(max(loss, LOG_FLOOR))
LOG_FLOOR = 1e-8
LOSS_KINDS = ("mean", "log", "log_mean", "final")
OUTER_DATA = ("fresh", "inner")

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
        opt_state: the learner's state without ``step`` (name -> tensor ``(..., N)``; for the
            paper's MLP ``{"accumulators": (A, N)}``).
        step: inner step ``t``: updates applied in this inner run.
        instance: how many times this problem has been reset (fixes its initial parameters).
    """

    params: Params
    opt_state: dict[str, torch.Tensor]
    step: int
    instance: int

    def optimizer_state(self) -> dict[str, Any]:
        """The learner's state dict (``step`` included), detached."""
        return {"step": self.step, **{k: v.detach() for k, v in self.opt_state.items()}}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (tensors moved to the CPU)."""
        return {
            "params": [p.detach().cpu() for p in self.params],
            "opt_state": {k: v.detach().cpu() for k, v in self.opt_state.items()},
            "step": self.step,
            "instance": self.instance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device) -> InnerState:
        return cls(
            params=tuple(p.to(device) for p in data["params"]),
            opt_state={k: v.to(device) for k, v in data["opt_state"].items()},
            step=int(data["step"]),
            instance=int(data["instance"]),
        )

    def is_finite(self) -> bool:
        return bool(
            all(torch.isfinite(p).all() for p in self.params)
            and all(torch.isfinite(v).all() for v in self.opt_state.values())
        )


def split_state(state: dict[str, Any], instance: int, params: Params) -> InnerState:
    """An :class:`InnerState` from a learner's state dict (detached)."""
    return InnerState(
        params=tuple(p.detach() for p in params),
        opt_state={k: v.detach() for k, v in state.items() if k != "step"},
        step=int(state["step"]),
        instance=instance,
    )


@dataclass(frozen=True)
class OuterObjective:
    """What the outer loss of a truncation measures.

    Attributes:
        split: ``train`` (outer-train) or ``valid`` (outer-valid).
        loss: ``mean`` (the mean over evaluated steps of the loss clipped at 10: the paper's),
            ``log`` (the mean of ``log(max(clipped loss, 1e-8))``: every order of magnitude
            counts the same, so a 1e-5 training loss is still visible), ``log_mean`` (the log of
            the truncation's mean clipped loss: scale-free too, but a trajectory that spikes
            between 1e-8 and 1e-2 scores like its mean, 5e-3, where ``log`` scores it like a
            steady 1e-5) or ``final`` (the
            clipped loss after the last step of the inner run; truncations that do not end the
            run have no outer loss: 0, and they are not counted in the logged mean).
        every: evaluate after the truncation's last step and every ``every`` steps before it.
        start: evaluate only after inner steps later than this one (0: every step qualifies).
        data: ``fresh`` (K outer batches per evaluation) or ``inner`` (train split only: the
            loss of the next inner training batch, computed by the next inner step anyway; one
            extra forward pass per truncation, for its last step).
        batches: K, outer batches per evaluation (``fresh`` only).
    """

    split: str = "train"
    loss: str = "mean"
    every: int = 1
    data: str = "fresh"
    batches: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if (
            self.loss not in LOSS_KINDS
            or self.data not in OUTER_DATA
            or self.every < 1
            or self.start < 0
        ):
            raise ValueError(f"invalid outer objective {self}")
        if self.data == "inner" and self.split != "train":
            raise ValueError("the inner batches are training batches: data=inner needs train")

    def evaluated(self, start: int, length: int, horizon: int) -> list[bool]:
        """For each step j of a truncation of ``length`` steps from inner step ``start``:
        whether the outer loss is evaluated after it."""
        if self.loss == "final":
            return [start + j + 1 >= horizon for j in range(length)]
        return [
            (length - 1 - j) % self.every == 0 and start + j + 1 > self.start for j in range(length)
        ]

    def value(self, loss: torch.Tensor) -> torch.Tensor:
        """The per-step value of an already clipped loss (or of K of them, averaged)."""
        if self.loss == "log":
            return torch.log(loss.clamp(min=LOG_FLOOR)).mean()
        return loss.mean()

    def finish(self, mean: torch.Tensor) -> torch.Tensor:
        """The truncation's outer loss from the mean of its per-step values."""
        if self.loss == "log_mean":
            return torch.log(mean.clamp(min=LOG_FLOOR))
        return mean


@dataclass
class TruncationData:
    """The batches of one truncation, shared by the +eps and -eps unrolls (common random
    numbers): ``inner[j]`` is the training batch of inner step j (with ``data=inner`` one more,
    for the last step's outer loss); ``evaluate[j]`` says whether the outer loss is evaluated
    after step j; ``outer[j]`` its K outer batches stacked (each component with a leading
    dimension of size K), None where not evaluated or with ``data=inner``."""

    inner: list[Batch]
    outer: list[Batch | None]
    evaluate: list[bool] | None = None

    def __post_init__(self) -> None:
        if self.evaluate is None:
            self.evaluate = [True] * len(self.outer)

    @property
    def length(self) -> int:
        return len(self.outer)

    @property
    def evaluations(self) -> int:
        """How many outer-loss evaluations the truncation has."""
        assert self.evaluate is not None
        return sum(self.evaluate)


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
    """B inner problems of one task, driven by a learner (the TruncatedStep).

    Args:
        task: the task (its ``init_params``, ``batches`` and ``loss`` are the whole model).
        learner: the :class:`optimizers.base.Learner`; unrolls call
            ``learner.apply(theta, ...)``, the function the harness runner calls through
            ``update``.
        num_problems: B.
        horizon: steps of an inner run.
        outer_batches: K.
        objective: the outer loss's split, ``train`` or ``valid``.
        seed: the meta-training seed (see :func:`derive_seed`).
        loss, outer_every, outer_from, outer_data: the rest of the :class:`OuterObjective`.
    """

    def __init__(
        self,
        task: Task,
        learner: Learner,
        *,
        num_problems: int,
        horizon: int,
        outer_batches: int,
        objective: str,
        seed: int,
        loss: str = "mean",
        outer_every: int = 1,
        outer_data: str = "fresh",
        outer_from: int = 0,
    ) -> None:
        self.task = task
        self.learner = learner
        self.num_problems = num_problems
        self.horizon = horizon
        self.outer = OuterObjective(
            split=objective,
            loss=loss,
            every=outer_every,
            data=outer_data,
            batches=outer_batches,
            start=outer_from,
        )
        self.seed = seed

    @property
    def num_theta(self) -> int:
        """The size of the learner's theta."""
        return int(self.learner.num_theta)

    # -- states -----------------------------------------------------------------------------------
    def fresh_state(self, problem: int, instance: int, step: int = 0) -> InnerState:
        """New initial parameters for ``(problem, instance)``, the learner's initial state, at
        ``step``."""
        params = self.task.init_params(derive_seed(self.seed, STREAM_INIT, problem, instance))
        state = split_state(self.learner.init(params), instance, params)
        state.step = step
        return state

    def initial_state(self, problem: int) -> InnerState:
        """Problem ``problem``'s state at the first outer step: staggered start."""
        return self.fresh_state(problem, 0, step=problem * self.horizon // self.num_problems)

    def needs_reset(self, final: InnerState) -> bool:
        """Whether a truncation's final state ends its inner run (horizon reached, or not
        finite)."""
        return final.step >= self.horizon or not final.is_finite()

    def advance(self, problem: int, final: InnerState) -> tuple[InnerState, bool]:
        """The state after a truncation: ``final``, or a reset one when ``final`` reached the
        horizon or is not finite. Returns ``(state, was_reset)``."""
        if self.needs_reset(final):
            return self.fresh_state(problem, final.instance + 1), True
        return final, False

    # -- data -------------------------------------------------------------------------------------
    def data(self, problem: int, state: InnerState, length: int) -> TruncationData:
        """The batches of a truncation of ``length`` steps from ``state``: a pure function of
        ``(seed, problem, state.instance, state.step)``."""
        keys = (problem, state.instance, state.step)
        outer = self.outer
        evaluate = outer.evaluated(state.step, length, self.horizon)
        inner = self.task.batches("train", derive_seed(self.seed, STREAM_INNER_BATCHES, *keys))
        if outer.data == "inner":
            extra = 1 if evaluate[-1] else 0
            return TruncationData(
                inner=list(islice(inner, length + extra)),
                outer=[None] * length,
                evaluate=evaluate,
            )
        stream = self.task.batches(outer.split, derive_seed(self.seed, STREAM_OUTER_BATCHES, *keys))
        k = outer.batches
        batches: list[Batch | None] = [
            _stack(list(islice(stream, k))) if wanted else None for wanted in evaluate
        ]
        return TruncationData(inner=list(islice(inner, length)), outer=batches, evaluate=evaluate)

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
        """Run the learner with ``theta`` for ``data.length`` steps from ``state``.

        Args:
            grad_mode: ``second`` (the outer loss is differentiable in ``theta``, through the
                inner gradients too), ``first`` (inner gradients treated as constants) or
                ``none`` (no graph: the plain training steps, as the harness runner does them).

        Returns ``(outer_loss, final_state)``: the mean over the evaluated steps (and the K
        outer batches) of the objective's per-step value (a 0-d tensor, differentiable in
        ``theta`` unless ``none``; 0 when nothing is evaluated), and the final state, detached.
        """
        if grad_mode not in ("second", "first", "none"):
            raise ValueError(f"grad_mode must be second, first or none, got {grad_mode!r}")
        track = grad_mode != "none"
        task, learner, outer = self.task, self.learner, self.outer
        reuse = outer.data == "inner"
        evaluate = data.evaluate
        assert evaluate is not None
        params: Params = tuple(p.detach().requires_grad_(True) for p in state.params)
        opt_state = state.optimizer_state()
        total: torch.Tensor | float = 0.0
        for j in range(data.length):
            with torch.enable_grad():
                if not track:
                    params = tuple(p.detach().requires_grad_(True) for p in params)
                loss = task.loss(params, data.inner[j]).clamp(max=LOSS_CLIP)
                grads = torch.autograd.grad(loss, params, create_graph=grad_mode == "second")
            if reuse and j > 0 and evaluate[j - 1]:  # the loss of this step's parameters
                total = total + outer.value(loss if track else loss.detach())
            with torch.set_grad_enabled(track):
                params, opt_state = learner.apply(
                    theta, grads, opt_state, params, reuse_buffers=not track
                )
                if evaluate[j] and not reuse:
                    total = total + outer_loss_at(task, params, data.outer[j], outer)
        if reuse and evaluate[-1]:
            with torch.set_grad_enabled(track):
                last = task.loss(params, data.inner[data.length]).clamp(max=LOSS_CLIP)
                total = total + outer.value(last)
        outer_loss = outer.finish(torch.as_tensor(total) / max(1, data.evaluations))
        return outer_loss, split_state(opt_state, state.instance, params)

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
        the inner gradients); with ``none``, None. Needs an objective evaluated after every
        step on fresh batches (``every=1``, ``start=0``, ``data=fresh``, loss ``mean`` or
        ``log``).

        Returns ``(outer_losses (M,), grads or None, final_states)``.
        """
        from torch.func import grad, grad_and_value, vmap

        if grad_mode not in ("second", "first", "none"):
            raise ValueError(f"grad_mode must be second, first or none, got {grad_mode!r}")
        objective = self.outer
        if (
            objective.every != 1
            or objective.start != 0
            or objective.data != "fresh"
            or objective.loss == "final"
        ):
            raise ValueError("vmap unrolls need every=1, start=0, data=fresh and loss mean or log")
        task, learner = self.task, self.learner
        lengths = [d.length for d in datas]
        longest = max(lengths)
        device = thetas.device
        mask = torch.tensor(
            [[j < n for j in range(longest)] for n in lengths], dtype=torch.bool, device=device
        )
        inner = _stack_padded([d.inner for d in datas], longest)
        outer = _stack_padded([d.outer for d in datas], longest)  # type: ignore[misc]
        params = tuple(torch.stack(ps) for ps in zip(*(s.params for s in states), strict=True))
        names = list(states[0].opt_state)
        opt_tensors = {n: torch.stack([s.opt_state[n] for s in states]) for n in names}
        dtype = params[0].dtype
        steps = torch.tensor([float(s.step) for s in states], dtype=dtype, device=device)
        first_order = grad_mode == "first"

        def one_problem(theta, params, opt_tensors, step, inner, outer, mask):  # type: ignore[no-untyped-def]
            total = torch.zeros((), dtype=dtype, device=device)
            for j in range(longest):
                batch = tuple(x[j] for x in inner)

                def inner_loss(p, batch=batch):  # type: ignore[no-untyped-def]
                    return task.loss(p, batch).clamp(max=LOSS_CLIP)

                grads = grad(inner_loss)(params)
                if first_order:
                    grads = tuple(g.detach() for g in grads)
                new_params, new_state = learner.apply(
                    theta, grads, {"step": step, **opt_tensors}, params
                )
                active = mask[j]
                params = tuple(
                    torch.where(active, n, o) for n, o in zip(new_params, params, strict=True)
                )
                opt_tensors = {
                    n: torch.where(active, new_state[n], opt_tensors[n]) for n in opt_tensors
                }
                step = step + active.to(dtype)
                loss = outer_loss_at(task, params, tuple(x[j] for x in outer), objective)
                total = total + torch.where(active, loss, torch.zeros_like(loss))
            return objective.finish(total / mask.sum()), (params, opt_tensors)

        args = (thetas, params, opt_tensors, steps, inner, outer, mask)
        if grad_mode == "none":
            with torch.no_grad():
                losses, (final_params, final_opt) = vmap(one_problem)(*args)
            grads = None
        else:
            grads, (losses, (final_params, final_opt)) = vmap(
                grad_and_value(one_problem, has_aux=True)
            )(*args)
            grads = grads.detach()
        finals = [
            InnerState(
                params=tuple(p[i].detach() for p in final_params),
                opt_state={n: final_opt[n][i].detach() for n in names},
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


def outer_loss_at(
    task: Task, params: Params, batches: Batch, objective: OuterObjective | None = None
) -> torch.Tensor:
    """The outer loss of ``params`` at one inner step: the mean over the K stacked ``batches``
    of the objective's value (default: the loss) of the task's loss clipped at 10 (each batch
    clipped on its own).

    The K losses come from one ``torch.func.vmap`` of ``task.loss`` over the batches (the model
    sees one batch of K times the size: faster than K calls, forward and backward).
    """
    value = objective.value if objective is not None else torch.Tensor.mean
    if batches[0].shape[0] == 1:
        return value(task.loss(params, tuple(x[0] for x in batches)).clamp(max=LOSS_CLIP))
    losses = torch.func.vmap(task.loss, in_dims=(None, 0))(params, batches)
    return value(losses.clamp(max=LOSS_CLIP))


def schedule_from_config(cfg: Any, outer_steps: int) -> TruncationSchedule:
    """The schedule a :class:`harness.settings.meta.MetaTrainConfig` describes."""
    if cfg.schedule == "constant":
        return ConstantSchedule(cfg.unroll_length)
    return LinearSchedule(
        min_unroll=cfg.min_unroll,
        max_unroll=cfg.max_unroll,
        ramp_steps=cfg.ramp_steps if cfg.ramp_steps is not None else outer_steps,
        jitter=cfg.jitter,
        seed=cfg.seed,
    )
