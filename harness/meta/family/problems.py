"""The one place family meta-training touches the batched engine and the task families.

Rows, not problems: every function here works on R rows, each one inner problem (a sampled
:class:`tasks.families.FamilyTask` with its own initialisation seed), which may come from
different architectures. Rows are grouped by the task's ``group_key`` and each group advances as
one :class:`harness.meta.batched.ProblemBatch` (the engine's); the results are put back in row
order. A row's inner state is its flat parameters ``w`` (``[N]``, N depends on the task) and the
learner's state (name -> tensor, the row of the learner's batched state).

Two rows with the same task and initialisation seed at the same step see the same minibatches
(the engine derives a problem's data order from them): that is how an antithetic pair gets its
common random numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import UsageError
from harness.settings.family import LOSS_CLIP

#: the rp graph of a truncation holds about this many bytes per row, inner step and weight
#: (nominal_mlp eager: 30 floats measured); :func:`advance_with_gradient` differentiates at most
#: RP_GRAPH_BYTES of graph at a time (rows of one architecture in chunks)
RP_BYTES_PER_WEIGHT_STEP = 128
RP_GRAPH_BYTES = 2**30
#: the outer loss is the mean over a truncation's steps of log(clamp(loss, LOG_FLOOR, LOSS_CLIP))
#: (a non-finite loss counts as the clip)
LOG_FLOOR = 1e-8


def check_family(name: str) -> None:
    """One-line ``UsageError`` unless ``name`` is a registered task family."""
    families = family_names()
    if name not in families:
        raise UsageError(f"family must be one of {', '.join(families)}; got {name!r}")


def family_names() -> list[str]:
    """The registered task families."""
    import tasks  # noqa: F401  (registers the built-in families)
    from harness.registry import list_families

    return list(list_families())


def training_seed(seed: int) -> int:
    """A derived seed moved below the families' held-out seeds (``tasks.families``'s
    ``HELD_OUT_SEEDS``: ``range(HELD_OUT_SEEDS, HELD_OUT_SEEDS + n)`` is a family's fixed
    held-out sample), so no training task is a held-out one."""
    from tasks.families import HELD_OUT_SEEDS

    return seed % HELD_OUT_SEEDS


@functools.lru_cache(maxsize=4096)
def family_task(family: str, seed: int, arch_seed: int | None = None) -> Any:
    """The task ``family`` samples on member seed ``seed``, of the architecture ``arch_seed``
    draws (None: the one ``seed`` draws). Deterministic; cached."""
    from tasks.families import sample_group, sample_tasks

    if arch_seed is None:
        (task,) = sample_tasks(family, [seed])
    else:
        (task,) = sample_group(family, arch_seed, [seed])
    return task


@dataclass
class Rows:
    """R inner problems between truncations (row r: ``tasks[r]`` from ``init_seeds[r]``).

    Attributes:
        tasks, init_seeds: each row's task and initialisation seed.
        w: each row's flat parameters (``[N_r]``).
        state: each row's learner state (name -> tensor row).
        step: inner steps taken in each row's current inner run.
        horizon: each row's inner horizon.
    """

    tasks: list[Any]
    init_seeds: list[int]
    w: list[torch.Tensor]
    state: list[dict[str, torch.Tensor]]
    step: list[int]
    horizon: list[int]

    def subset(self, idx: Sequence[int]) -> Rows:
        """The rows ``idx``, in that order."""
        return Rows(*([getattr(self, f)[j] for j in idx] for f in FIELDS))

    def __add__(self, other: Rows) -> Rows:
        """These rows, then ``other``'s."""
        return Rows(*(getattr(self, f) + getattr(other, f) for f in FIELDS))


FIELDS = ("tasks", "init_seeds", "w", "state", "step", "horizon")


def groups(tasks: Sequence[Any]) -> list[list[int]]:
    """Row indices grouped by the task's ``group_key`` (in order of first appearance)."""
    out: dict[Any, list[int]] = {}
    for r, task in enumerate(tasks):
        out.setdefault(task.group_key, []).append(r)
    return list(out.values())


def batch_of(tasks: Sequence[Any], init_seeds: Sequence[int]) -> Any:
    """The engine's ProblemBatch of these rows (one group; built once for the same rows: the
    rows of a pair's truncations stay the same until a reset)."""
    return _cached_batch(tuple(tasks), tuple(int(s) for s in init_seeds))


@functools.lru_cache(maxsize=16)
def _cached_batch(tasks: tuple[Any, ...], init_seeds: tuple[int, ...]) -> Any:
    from harness.meta.batched import ProblemBatch

    return ProblemBatch(list(tasks), list(init_seeds))


def initial_rows(
    learner: Any, tasks: Sequence[Any], init_seeds: Sequence[int]
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Each row's initial ``w`` and learner state."""
    ws: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
    states: list[dict[str, torch.Tensor]] = [{}] * len(tasks)
    for idx in groups(tasks):
        batch = batch_of([tasks[r] for r in idx], [init_seeds[r] for r in idx])
        w = batch.init_params()
        state = learner.batched_init(w)
        for j, r in enumerate(idx):
            ws[r] = w[j].clone()
            states[r] = {k: v[j].clone() for k, v in state.items()}
    return ws, states


def advance(
    learner: Any, rows: Rows, theta: torch.Tensor, num_steps: int, objective: str = "train"
) -> tuple[Rows, torch.Tensor]:
    """Every row ``num_steps`` inner steps further with its own row of ``theta`` (``[R, D]``).

    Returns the rows after the steps and the minibatch losses ``[num_steps, R]`` (the loss at
    each step's parameters before its update, on a ``objective`` minibatch: ``train``, the one
    the step trains on, or ``valid``). No row may pass its horizon.
    """
    from harness.meta.batched import unroll

    out, losses = _moved(rows, num_steps)
    for idx in groups(rows.tasks):
        batch, w, state, step, horizon = _group(rows, idx)
        w, state, _, group_losses = unroll(
            batch, learner, theta[idx], w, state, step, horizon, num_steps, objective
        )
        _put(out, losses, idx, w, state, group_losses)
    return out, losses


def advance_with_gradient(
    learner: Any,
    rows: Rows,
    theta: torch.Tensor,
    num_steps: int,
    objective: str = "train",
    first_order: bool = False,
    floor: float = LOG_FLOOR,
) -> tuple[Rows, torch.Tensor, torch.Tensor]:
    """:func:`advance` through the differentiable unroll, plus each row's gradient of its
    outer loss (:func:`outer_loss` at ``floor``) in its own row of ``theta``: ``[R, D]``
    float64 (the reparameterisation gradient, backprop through the truncation's inner updates
    and inner gradients unless ``first_order``). One graph at a time (built, differentiated,
    freed): the rows of one architecture, in chunks of at most :data:`RP_GRAPH_BYTES` of graph
    (about 1 GiB). Returns ``(rows, losses, grads)``; rows and losses detached."""
    out, losses = _moved(rows, num_steps)
    grads = torch.zeros(theta.shape, dtype=torch.float64)
    for group in groups(rows.tasks):
        size = int(rows.w[group[0]].numel())
        per_graph = max(1, int(RP_GRAPH_BYTES // (RP_BYTES_PER_WEIGHT_STEP * num_steps * size)))
        for first in range(0, len(group), per_graph):
            idx = group[first : first + per_graph]
            _rp_part(
                learner,
                rows,
                idx,
                theta,
                num_steps,
                objective,
                first_order,
                floor,
                out,
                losses,
                grads,
            )
    return out, losses, grads


def _rp_part(
    learner: Any,
    rows: Rows,
    idx: Sequence[int],
    theta: torch.Tensor,
    num_steps: int,
    objective: str,
    first_order: bool,
    floor: float,
    out: Rows,
    losses: torch.Tensor,
    grads: torch.Tensor,
) -> None:
    """One graph of :func:`advance_with_gradient`: rows ``idx`` (one architecture)."""
    from harness.meta.batched.differentiable import unroll_with_graph

    batch, w, state, step, horizon = _group(rows, idx)
    with torch.enable_grad():
        leaf = theta[idx].detach().clone().requires_grad_(True)
        w, state, _, group_losses = unroll_with_graph(
            batch,
            learner,
            leaf,
            w,
            state,
            step,
            horizon,
            num_steps,
            objective=objective,
            first_order=first_order,
        )
        (grad,) = torch.autograd.grad(outer_loss(group_losses, floor).sum(), leaf)
    grads[idx] = grad.double()
    state = {k: v.detach() for k, v in state.items()}
    _put(out, losses, idx, w.detach(), state, group_losses.detach())


def _moved(rows: Rows, num_steps: int) -> tuple[Rows, torch.Tensor]:
    """A copy of ``rows`` with the steps moved on, and an empty ``[num_steps, R]`` loss table
    (``ValueError`` if a row would pass its horizon)."""
    count = len(rows.tasks)
    losses = torch.empty(num_steps, count)
    out = Rows(
        list(rows.tasks),
        list(rows.init_seeds),
        list(rows.w),
        list(rows.state),
        [s + num_steps for s in rows.step],
        list(rows.horizon),
    )
    if any(s + num_steps > h for s, h in zip(rows.step, rows.horizon, strict=True)):
        raise ValueError("a row would pass its horizon")
    return out, losses


def _group(rows: Rows, idx: Sequence[int]) -> tuple[Any, Any, Any, Any, Any]:
    """The engine's batch of rows ``idx`` and their stacked ``w``, state, step and horizon."""
    batch = batch_of([rows.tasks[r] for r in idx], [rows.init_seeds[r] for r in idx])
    w = torch.stack([rows.w[r] for r in idx])
    names = rows.state[idx[0]].keys()
    state = {k: torch.stack([rows.state[r][k] for r in idx]) for k in names}
    step = torch.tensor([rows.step[r] for r in idx], dtype=torch.int64)
    horizon = torch.tensor([rows.horizon[r] for r in idx], dtype=torch.int64)
    return batch, w, state, step, horizon


def _put(
    out: Rows,
    losses: torch.Tensor,
    idx: Sequence[int],
    w: torch.Tensor,
    state: dict[str, torch.Tensor],
    group_losses: torch.Tensor,
) -> None:
    """Write a group's results back into row order."""
    losses[:, idx] = group_losses.to(losses.dtype)
    for j, r in enumerate(idx):
        out.w[r] = w[j].clone()
        out.state[r] = {k: v[j].clone() for k, v in state.items()}


def outer_loss(losses: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Per row, the mean over steps of ``log(clamp(loss, floor, 10))`` (non-finite: the clip):
    ``[steps, R] -> [R]`` (float64). A loss below ``floor`` earns nothing more (a run's
    ``loss_floor``; default 1e-8)."""
    clean = torch.nan_to_num(losses.double(), nan=LOSS_CLIP, posinf=LOSS_CLIP, neginf=LOSS_CLIP)
    return clean.clamp(floor, LOSS_CLIP).log().mean(0)


def whole_split_losses(rows: Rows, split: str) -> torch.Tensor:
    """Each row's loss on the whole ``split`` (``[R]``, float64; non-finite: the clip)."""
    out = torch.empty(len(rows.tasks), dtype=torch.float64)
    for idx in groups(rows.tasks):
        batch = batch_of([rows.tasks[r] for r in idx], [rows.init_seeds[r] for r in idx])
        w = torch.stack([rows.w[r] for r in idx])
        out[idx] = batch.eval_loss(w, split).double()
    return torch.nan_to_num(out, nan=LOSS_CLIP, posinf=LOSS_CLIP).clamp(max=LOSS_CLIP)
