"""Antithetic pairs of inner problems sampled from a task family, and their truncations (the
TruncatedStep of family meta-training).

A *pair* ``i`` runs one inner problem twice: a +eps row with ``theta + sigma n`` and a -eps row
with ``theta - sigma n``, on the same task, the same initialisation and the same minibatches
(common random numbers). Its inner run lasts ``horizon`` steps, drawn log-uniformly in
``[min_horizon, max_horizon]`` and rounded to a whole number of truncations; then the pair is
reset: a new task from the family, a new initialisation, a new horizon (``instance + 1``). Every
draw is a pure function of ``(seed, stream, pair, instance)``, so a run is the same however it
is split into chunks or over processes.

Architecture groups: the engine batches problems of one architecture, and a family has
hundreds (``mlp_mix``: about 1,500), so 32 pairs each drawing its own would run as 32 batches of
two rows. With ``arch_groups = A`` pair ``p`` belongs to group ``p % A``, and an inner run that
starts at outer step ``s`` takes the architecture the group draws for period
``s // arch_period`` (the member, its dataset and rescaling, stay the pair's own): the pairs of
a group share one architecture most of the time, and every group moves through the family's
architectures as the run goes on. ``arch_groups=None`` lets every inner run draw its own.

Staggering: at outer step 0 each pair's first inner run is advanced (with the initial theta,
unperturbed) to a random whole number of truncations into its horizon, so the pairs of an
outer step cover the whole training horizon instead of all starting at step 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.meta.family.problems import Rows, advance, family_task, initial_rows, training_seed
from harness.meta.truncation import derive_seed

STREAM_TASK = 21
STREAM_INIT = 22
STREAM_HORIZON = 23
STREAM_OFFSET = 24
STREAM_ARCH = 29


@dataclass(frozen=True)
class PairSchedule:
    """Which task, initialisation and horizon each (pair, instance) gets, and what a
    truncation's outer loss is measured on (``objective``: ``train`` or ``valid`` minibatches
    of the pair's task; the inner steps always train on ``train``) and the loss below which it
    earns nothing more (``loss_floor``: :func:`~harness.meta.family.problems.outer_loss`)."""

    family: str
    seed: int
    truncation: int
    min_horizon: int
    max_horizon: int
    stagger: bool = True
    arch_groups: int | None = None
    objective: str = "train"
    loss_floor: float = 1e-8

    @property
    def arch_period(self) -> int:
        """Outer steps an architecture group keeps its architecture: the longest horizon's
        truncations."""
        return max(1, self.max_horizon // self.truncation)

    def arch_seed(self, pair: int, outer_step: int) -> int | None:
        """The architecture seed of an inner run of ``pair`` starting at ``outer_step`` (None
        without ``arch_groups``)."""
        if self.arch_groups is None:
            return None
        group, period = pair % self.arch_groups, outer_step // self.arch_period
        return training_seed(derive_seed(self.seed, STREAM_ARCH, group, period))

    def uniform(self, stream: int, *keys: int) -> float:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, stream, *keys))
        return float(torch.rand((), generator=generator, dtype=torch.float64))

    def horizon(self, pair: int, instance: int, stream: int = STREAM_HORIZON) -> int:
        """Log-uniform in ``[min_horizon, max_horizon]``, rounded to a multiple of
        ``truncation`` (at least one truncation)."""
        low, high = math.log(self.min_horizon), math.log(self.max_horizon)
        length = math.exp(low + self.uniform(stream, pair, instance) * (high - low))
        return self.truncation * max(1, round(length / self.truncation))

    def task_seed(self, pair: int, instance: int) -> int:
        """The family's member seed (always below the held-out seeds)."""
        return training_seed(derive_seed(self.seed, STREAM_TASK, pair, instance))

    def init_seed(self, pair: int, instance: int) -> int:
        return derive_seed(self.seed, STREAM_INIT, pair, instance)

    def offset(self, pair: int, horizon: int) -> int:
        """Where the pair's first inner run starts: a uniform whole number of truncations
        before its horizon (0 without ``stagger``)."""
        if not self.stagger:
            return 0
        whole = horizon // self.truncation
        return self.truncation * min(whole - 1, int(self.uniform(STREAM_OFFSET, pair) * whole))


@dataclass
class PairState:
    """One pair between truncations.

    Attributes:
        pair, instance: which pair, and how many times it has been reset.
        task_seed, arch_seed, init_seed, horizon, step: its current inner run (its task is
            ``family_task(family, task_seed, arch_seed)``).
        w_plus, state_plus: the +eps trajectory's parameters and learner state.
        w_minus, state_minus: the -eps trajectory's (None when the estimator restarts both
            rows from the +eps one at every truncation).
        accumulated: the sum of the perturbation directions of this inner run (PES; ``[D]``).
    """

    pair: int
    instance: int
    task_seed: int
    arch_seed: int | None
    init_seed: int
    horizon: int
    step: int
    w_plus: torch.Tensor
    state_plus: dict[str, torch.Tensor]
    w_minus: torch.Tensor | None
    state_minus: dict[str, torch.Tensor] | None
    accumulated: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairState:
        return cls(**data)


def fresh_pairs(
    schedule: PairSchedule,
    learner: Any,
    pairs: Sequence[tuple[int, int]],
    num_theta: int,
    two_trajectories: bool,
    outer_step: int = 0,
) -> list[PairState]:
    """New inner runs for ``pairs`` (``(pair, instance)``), at step 0, starting at
    ``outer_step``."""
    task_seeds = [schedule.task_seed(p, k) for p, k in pairs]
    arch_seeds = [schedule.arch_seed(p, outer_step) for p, _ in pairs]
    init_seeds = [schedule.init_seed(p, k) for p, k in pairs]
    tasks = [
        family_task(schedule.family, s, a) for s, a in zip(task_seeds, arch_seeds, strict=True)
    ]
    ws, states = initial_rows(learner, tasks, init_seeds)
    out = []
    for j, (p, k) in enumerate(pairs):
        out.append(
            PairState(
                pair=p,
                instance=k,
                task_seed=task_seeds[j],
                arch_seed=arch_seeds[j],
                init_seed=init_seeds[j],
                horizon=schedule.horizon(p, k),
                step=0,
                w_plus=ws[j],
                state_plus=states[j],
                w_minus=ws[j].clone() if two_trajectories else None,
                state_minus={n: v.clone() for n, v in states[j].items()}
                if two_trajectories
                else None,
                accumulated=torch.zeros(num_theta, dtype=torch.float64),
            )
        )
    return out


def rows_of(schedule: PairSchedule, states: Sequence[PairState], side: str) -> Rows:
    """The ``plus`` or ``minus`` rows of ``states`` (``minus`` falls back to the +eps
    trajectory when a pair keeps one)."""
    minus = side == "minus"
    return Rows(
        tasks=[family_task(schedule.family, s.task_seed, s.arch_seed) for s in states],
        init_seeds=[s.init_seed for s in states],
        w=[s.w_minus if minus and s.w_minus is not None else s.w_plus for s in states],
        state=[
            s.state_minus if minus and s.state_minus is not None else s.state_plus for s in states
        ],
        step=[s.step for s in states],
        horizon=[s.horizon for s in states],
    )


def stagger(
    schedule: PairSchedule, learner: Any, theta: torch.Tensor, states: list[PairState]
) -> list[PairState]:
    """Advance each new pair to its :meth:`PairSchedule.offset` with ``theta`` (unperturbed;
    both trajectories identical). Returns the advanced states."""
    offsets = [schedule.offset(s.pair, s.horizon) for s in states]
    states = list(states)
    while True:
        active = [j for j, s in enumerate(states) if s.step < offsets[j]]
        if not active:
            return states
        part = [states[j] for j in active]
        rows, _ = advance(
            learner,
            rows_of(schedule, part, "plus"),
            theta.expand(len(part), -1),
            schedule.truncation,
        )
        for n, j in enumerate(active):
            s = states[j]
            s.step = rows.step[n]
            s.w_plus, s.state_plus = rows.w[n], rows.state[n]
            if s.w_minus is not None:
                s.w_minus = rows.w[n].clone()
                s.state_minus = {k: v.clone() for k, v in rows.state[n].items()}


@dataclass
class Truncation:
    """What one truncation of every pair gave (pairs in the order given).

    Attributes:
        loss_plus, loss_minus: each pair's outer loss on its +eps and -eps row (``[P]``).
        plus, minus: the rows after the truncation.
        rp: with ``rp``, each pair's reparameterisation sample ``[P, D]`` (float64):
            ``1/2 d/dtheta [L(theta + eps) + L(theta - eps)]``, backprop through both rows.
    """

    loss_plus: torch.Tensor
    loss_minus: torch.Tensor
    plus: Rows
    minus: Rows
    rp: torch.Tensor | None = None


def antithetic_truncation(
    schedule: PairSchedule,
    learner: Any,
    theta: torch.Tensor,
    noises: torch.Tensor,
    sigma: float,
    states: Sequence[PairState],
    rp: bool = False,
) -> Truncation:
    """Both rows of every pair one truncation further: the +eps row with ``theta + sigma n_i``
    from the +eps trajectory, the -eps row with ``theta - sigma n_i`` from the -eps trajectory
    (or the +eps one), all pairs' rows as one set of batches. ``noises`` is ``[P, D]``. The
    outer loss is on the schedule's ``objective`` split; with ``rp`` the rows run through the
    differentiable unroll and the truncation carries each pair's rp sample."""
    from harness.meta.family.problems import advance_with_gradient, outer_loss

    count = len(states)
    plus, minus = rows_of(schedule, states, "plus"), rows_of(schedule, states, "minus")
    both = plus + minus
    eps = sigma * noises.to(theta.dtype)
    thetas = torch.cat([theta + eps, theta - eps])
    grads = None
    if rp:
        after, losses, grads = advance_with_gradient(
            learner,
            both,
            thetas,
            schedule.truncation,
            schedule.objective,
            floor=schedule.loss_floor,
        )
    else:
        after, losses = advance(learner, both, thetas, schedule.truncation, schedule.objective)
    loss = outer_loss(losses, schedule.loss_floor)
    first, second = list(range(count)), list(range(count, 2 * count))
    sample = None if grads is None else 0.5 * (grads[:count] + grads[count:])
    return Truncation(loss[:count], loss[count:], after.subset(first), after.subset(second), sample)


def finite_rows(rows: Rows, j: int) -> bool:
    """Whether row ``j``'s parameters and learner state are all finite."""
    tensors = [rows.w[j], *rows.state[j].values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def next_states(
    schedule: PairSchedule,
    learner: Any,
    states: Sequence[PairState],
    result: Truncation,
    accumulated: Sequence[torch.Tensor],
    two_trajectories: bool,
    outer_step: int = 0,
) -> tuple[list[PairState], list[bool]]:
    """Each pair after the truncation of ``outer_step``: both trajectories (or the +eps one)
    and ``accumulated`` carried on, or, at the horizon or when a row stopped being finite, a
    fresh inner run (the next instance, starting at ``outer_step + 1``). Returns the states and
    which pairs were reset."""
    out: list[PairState | None] = []
    resets: list[bool] = []
    for j, s in enumerate(states):
        step = result.plus.step[j]
        bad = not finite_rows(result.plus, j) or not finite_rows(result.minus, j)
        if step >= s.horizon or bad:
            out.append(None)
            resets.append(True)
            continue
        resets.append(False)
        out.append(
            PairState(
                pair=s.pair,
                instance=s.instance,
                task_seed=s.task_seed,
                arch_seed=s.arch_seed,
                init_seed=s.init_seed,
                horizon=s.horizon,
                step=step,
                w_plus=result.plus.w[j],
                state_plus=result.plus.state[j],
                w_minus=result.minus.w[j] if two_trajectories else None,
                state_minus=result.minus.state[j] if two_trajectories else None,
                accumulated=accumulated[j],
            )
        )
    todo = [(s.pair, s.instance + 1) for s, new in zip(states, out, strict=True) if new is None]
    if todo:
        size = states[0].accumulated.numel()
        fresh = iter(fresh_pairs(schedule, learner, todo, size, two_trajectories, outer_step + 1))
        out = [new if new is not None else next(fresh) for new in out]
    return [s for s in out if s is not None], resets
