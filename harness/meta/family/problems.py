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

#: the outer loss is the mean over a truncation's steps of log(clamp(loss, LOG_FLOOR, LOSS_CLIP))
#: (a non-finite loss counts as the clip)
LOSS_CLIP = 10.0
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
    learner: Any, rows: Rows, theta: torch.Tensor, num_steps: int
) -> tuple[Rows, torch.Tensor]:
    """Every row ``num_steps`` inner steps further with its own row of ``theta`` (``[R, D]``).

    Returns the rows after the steps and the minibatch losses ``[num_steps, R]`` (the loss at
    each step's parameters before its update). No row may pass its horizon.
    """
    from harness.meta.batched import unroll

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
    for idx in groups(rows.tasks):
        batch = batch_of([rows.tasks[r] for r in idx], [rows.init_seeds[r] for r in idx])
        w = torch.stack([rows.w[r] for r in idx])
        names = rows.state[idx[0]].keys()
        state = {k: torch.stack([rows.state[r][k] for r in idx]) for k in names}
        step = torch.tensor([rows.step[r] for r in idx], dtype=torch.int64)
        horizon = torch.tensor([rows.horizon[r] for r in idx], dtype=torch.int64)
        w, state, _, group_losses = unroll(
            batch, learner, theta[idx], w, state, step, horizon, num_steps
        )
        losses[:, idx] = group_losses.to(losses.dtype)
        for j, r in enumerate(idx):
            out.w[r] = w[j].clone()
            out.state[r] = {k: v[j].clone() for k, v in state.items()}
    return out, losses


def outer_loss(losses: torch.Tensor) -> torch.Tensor:
    """Per row, the mean over steps of ``log(clamp(loss, 1e-8, 10))`` (non-finite: the clip):
    ``[steps, R] -> [R]`` (float64)."""
    clean = torch.nan_to_num(losses.double(), nan=LOSS_CLIP, posinf=LOSS_CLIP, neginf=LOSS_CLIP)
    return clean.clamp(LOG_FLOOR, LOSS_CLIP).log().mean(0)


def whole_split_losses(rows: Rows, split: str) -> torch.Tensor:
    """Each row's loss on the whole ``split`` (``[R]``, float64; non-finite: the clip)."""
    out = torch.empty(len(rows.tasks), dtype=torch.float64)
    for idx in groups(rows.tasks):
        batch = batch_of([rows.tasks[r] for r in idx], [rows.init_seeds[r] for r in idx])
        w = torch.stack([rows.w[r] for r in idx])
        out[idx] = batch.eval_loss(w, split).double()
    return torch.nan_to_num(out, nan=LOSS_CLIP, posinf=LOSS_CLIP).clamp(max=LOSS_CLIP)
