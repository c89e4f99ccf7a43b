"""Advance every problem of a :class:`ProblemBatch` by a number of inner steps."""

from __future__ import annotations

import torch

from harness.meta.batched.learners import BatchedLearner
from harness.meta.batched.memory import keep_large_allocations
from harness.meta.batched.problems import ProblemBatch


@torch.no_grad()
def unroll(
    batch: ProblemBatch,
    learner: BatchedLearner,
    theta: torch.Tensor,
    w: torch.Tensor,
    state: dict[str, torch.Tensor],
    step: torch.Tensor,
    horizon: torch.Tensor,
    num_steps: int,
    objective: str = "train",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``num_steps`` inner steps of every problem: minibatch loss and gradient at ``w`` (each
    problem's own minibatch of its current step), then ``learner.batched_step``.

    Args:
        theta: ``[B, D]``, one row per problem.
        w: ``[B, N]``; state: the learner's; step, horizon: ``[B]`` int64.
        objective: the split of the returned losses: ``train`` (the minibatch the step trains
            on) or ``valid`` (a validation minibatch of the same size at the same ``w``, one
            forward pass more per step: the outer-valid objective).

    Returns ``(w, state, step, losses)``: the parameters, state and steps after ``num_steps``
    updates, and ``losses`` ``[num_steps, B]``, the minibatch loss of each step before its
    update (step j's loss is at ``w`` after j updates), on ``objective``'s minibatch. No
    autograd graph (ES/PES need none; :mod:`~harness.meta.batched.differentiable` keeps one);
    no resets: a caller that wants them checks ``step >= horizon`` and :meth:`ProblemBatch.reseed`.
    The first call raises glibc's mmap threshold for the process
    (:func:`harness.meta.batched.memory.keep_large_allocations`).
    """
    if theta.shape[0] != batch.size or w.shape != (batch.size, batch.num_params):
        raise ValueError(
            f"theta {tuple(theta.shape)} and w {tuple(w.shape)} do not fit "
            f"{batch.size} problems of {batch.num_params} parameters"
        )
    keep_large_allocations()  # once per process: no page faults for each step's outputs
    indices = batch.batch_indices(step, num_steps)
    outer = batch.batch_indices(step, num_steps, objective) if objective != "train" else None
    losses = w.new_empty(num_steps, batch.size)
    for j in range(num_steps):
        loss, grad = batch.loss_and_grad(w, step, indices=indices[j])
        losses[j] = loss if outer is None else batch.minibatch_loss(w, outer[j], objective)
        w, state = learner.batched_step(theta, w, grad, state, step, horizon, batch.segments)
        step = step + 1
    return w, state, step, losses
