"""A differentiable unroll of the batched engine: the outer loss of a truncation as a function
of theta that autograd can differentiate, through the inner updates and the inner gradients.

:func:`unroll_with_graph` is :func:`harness.meta.batched.unroll` step for step (the same
minibatches, the same arithmetic, the losses equal to rounding) with the autograd graph kept:
nothing in the graph is modified in place, and the inner gradient is a differentiable function
of the weights, computed one of two ways (``inner_grad``):

* ``closed`` (MLPs, the ``hand`` backend): the engine's closed-form backward
  (:func:`harness.meta.batched.mlp.mlp_loss_and_grad`) written out of place, so autograd
  differentiates the formula itself (second-order terms through ``aten``'s differentiable
  ``*_backward`` kernels);
* ``autograd`` (any architecture): ``torch.autograd.grad(..., create_graph=True)`` of the
  forward pass.

Both give the same numbers (tested); ``benchmarks/differentiable_unroll.py`` measures which is
faster (the default, ``auto``, takes ``closed`` for MLPs). ``first_order`` detaches the inner
gradient (the rp gradient without second-order terms).

Memory: the graph holds every step's activations and the learner's per-parameter features
for all B rows; the family estimators differentiate one architecture group at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.meta.batched.learners import BatchedLearner
from harness.meta.batched.mlp import _activate, _activation_grad, _layers
from harness.meta.batched.problems import ProblemBatch

INNER_GRADS = ("auto", "closed", "autograd")


def mlp_loss_and_grad_graph(
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    shapes: Sequence[tuple[int, ...]],
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`harness.meta.batched.mlp.mlp_loss_and_grad` out of place: mean cross-entropy
    ``[B]`` and its gradient ``[B, N]`` in ``w`` [B, N], both differentiable in ``w`` (and in
    whatever ``w`` depends on). ``x`` [B, n, in], ``y`` [B, n] int64."""
    layers = _layers(w, shapes)
    n = x.shape[1]
    inputs = [x]
    pre: list[torch.Tensor] = []
    h = x
    for i, (weight, bias) in enumerate(layers):
        z = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i < len(layers) - 1:
            pre.append(z)
            h = _activate(z, activation)
            inputs.append(h)
        else:
            h = z
    logits = h
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, y.unsqueeze(-1))
    loss = (lse - picked).squeeze(-1).mean(dim=1)
    one_hot = torch.zeros_like(logits).scatter(-1, y.unsqueeze(-1), 1.0)
    dz = (torch.exp(logits - lse) - one_hot) / n
    grads: list[torch.Tensor] = []
    for i in range(len(layers) - 1, -1, -1):
        weight, _ = layers[i]
        grads.append(dz.sum(dim=1))
        grads.append(torch.bmm(dz.transpose(1, 2), inputs[i]).flatten(1))
        if i > 0:
            dz = _activation_grad(torch.bmm(dz, weight), pre[i - 1], inputs[i], activation)
    grads.reverse()
    return loss, torch.cat(grads, dim=1)


def resolve_inner_grad(batch: ProblemBatch, inner_grad: str) -> str:
    """``closed`` or ``autograd`` for ``batch`` (``auto``: ``closed`` for the hand backend)."""
    if inner_grad not in INNER_GRADS:
        raise ValueError(f"inner_grad must be one of {', '.join(INNER_GRADS)}, got {inner_grad!r}")
    if inner_grad == "auto":
        return "closed" if batch.functional is None else "autograd"
    if inner_grad == "closed" and batch.functional is not None:
        raise ValueError("the closed-form inner gradient computes MLPs only; use autograd")
    return inner_grad


def loss_and_grad_graph(
    batch: ProblemBatch, w: torch.Tensor, indices: torch.Tensor, inner_grad: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each problem's training-minibatch loss ``[B]`` at ``w`` [B, N] and its gradient
    ``[B, N]`` (in the optimizer's variables, as :meth:`ProblemBatch.loss_and_grad`), both in
    the graph; ``inner_grad`` ``closed`` or ``autograd``."""
    x, y = batch.minibatch(indices, "train")
    if inner_grad == "closed":
        w_eff = batch.effective(w)
        loss, grad = mlp_loss_and_grad_graph(w_eff, x, y, batch.shapes, batch.spec.activation)
        return loss, batch.effective(grad)  # d/dw = d/dw_eff * scale
    if not w.requires_grad:  # a truncation's start: not a function of theta
        w = w.detach().requires_grad_(True)
    w_eff = batch.effective(w)
    if batch.functional is not None:
        loss = torch.func.vmap(batch.functional.loss)(w_eff, x, y)
    else:
        from harness.meta.batched.mlp import cross_entropy_rows, mlp_logits

        logits = mlp_logits(w_eff, x, batch.shapes, batch.spec.activation)
        loss = cross_entropy_rows(logits, y).mean(dim=1)
    (grad,) = torch.autograd.grad(loss.sum(), w, create_graph=True)
    return loss, grad


def unroll_with_graph(
    batch: ProblemBatch,
    learner: BatchedLearner,
    theta: torch.Tensor,
    w: torch.Tensor,
    state: dict[str, torch.Tensor],
    step: torch.Tensor,
    horizon: torch.Tensor,
    num_steps: int,
    *,
    objective: str = "train",
    inner_grad: str = "auto",
    first_order: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`harness.meta.batched.unroll` with the autograd graph kept.

    Args:
        theta: ``[B, D]`` (typically a leaf with ``requires_grad``); the rest as ``unroll``.
        objective: ``train`` or ``valid``: which minibatch each step's returned loss is on.
        inner_grad: ``auto``, ``closed`` or ``autograd`` (module docstring).
        first_order: treat the inner gradients as constants.

    Returns ``(w, state, step, losses)`` as ``unroll``; ``losses`` ``[num_steps, B]`` and the
    final ``w`` and state are differentiable in ``theta``. Runs with autograd on whatever the
    caller's mode; the caller detaches what it keeps.
    """
    if theta.shape[0] != batch.size or w.shape != (batch.size, batch.num_params):
        raise ValueError(
            f"theta {tuple(theta.shape)} and w {tuple(w.shape)} do not fit "
            f"{batch.size} problems of {batch.num_params} parameters"
        )
    method = resolve_inner_grad(batch, inner_grad)
    indices = batch.batch_indices(step, num_steps)
    outer = batch.batch_indices(step, num_steps, objective) if objective != "train" else None
    losses = []
    with torch.enable_grad():
        for j in range(num_steps):
            loss, grad = loss_and_grad_graph(batch, w, indices[j], method)
            if first_order:
                grad = grad.detach()
            losses.append(loss if outer is None else batch.minibatch_loss(w, outer[j], objective))
            w, state = learner.batched_step(theta, w, grad, state, step, horizon, batch.segments)
            step = step + 1
    return w, state, step, torch.stack(losses)
