"""Hand-batched MLPs: forward and closed-form backward of B MLPs of one architecture at once.

Every problem's parameters are one row of a flat ``[B, N]`` tensor laid out as ``torch.nn``
lays out ``nn.Sequential(Linear, act, ..., Linear)``: ``W1 (out, in)`` row-major, ``b1``,
``W2``, ``b2``, ... (``shapes``). Layers run as ``torch.baddbmm`` over the B problems; the
backward pass is written out (softmax cross-entropy, then each layer's ``bmm``), not autograd,
which is what makes it fast on a CPU (docs/batched-engine.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(z)
    if activation == "tanh":
        if z.dtype == torch.float32:  # torch.tanh is 4-6x slower than sigmoid here (float32)
            if z.requires_grad:  # the same arithmetic, out of place (autograd needs sigmoid's)
                return torch.sigmoid(z * 2.0) * 2.0 - 1.0
            return torch.sigmoid(z * 2.0).mul_(2.0).sub_(1.0)
        return torch.tanh(z)
    return torch.nn.functional.gelu(z)


def _activation_grad(
    dh: torch.Tensor, z: torch.Tensor, h: torch.Tensor, activation: str
) -> torch.Tensor:
    """``dh * act'(z)`` (``h = act(z)``), with aten's fused backward kernels."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(dh, h, 0.0)
    if activation == "tanh":
        return torch.ops.aten.tanh_backward(dh, h)
    return torch.ops.aten.gelu_backward(dh, z)


def _layers(
    w: torch.Tensor, shapes: Sequence[tuple[int, ...]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views ``(W [B, out, in], b [B, out])`` of each layer's slice of ``w`` [B, N]."""
    views = []
    offset = 0
    rows = w.shape[0]
    for k in range(0, len(shapes), 2):
        out, fan_in = shapes[k]
        weight = w[:, offset : offset + out * fan_in].view(rows, out, fan_in)
        offset += out * fan_in
        bias = w[:, offset : offset + out]
        offset += out
        views.append((weight, bias))
    return views


def mlp_logits(
    w: torch.Tensor, x: torch.Tensor, shapes: Sequence[tuple[int, ...]], activation: str
) -> torch.Tensor:
    """Logits ``[B, n, classes]`` of the B MLPs ``w`` [B, N] on inputs ``x`` [B, n, in]."""
    layers = _layers(w, shapes)
    h = x
    for i, (weight, bias) in enumerate(layers):
        z = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        h = z if i == len(layers) - 1 else _activate(z, activation)
    return h


def cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``[B, n]`` of logits ``[B, n, C]`` and labels ``[B, n]``."""
    lse = torch.logsumexp(logits, dim=-1)
    return lse - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def mlp_loss_and_grad(
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    shapes: Sequence[tuple[int, ...]],
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy ``[B]`` of each MLP on its own minibatch and its gradient ``[B, N]``.

    Args:
        w: ``[B, N]`` parameters (the model's own weights: rescaling is the caller's).
        x: ``[B, n, in]`` inputs, one minibatch per problem; ``y``: ``[B, n]`` int64 labels.
        shapes: the parameter shapes (weight, bias, ...), as :attr:`FamilyTask.shapes`.
    """
    layers = _layers(w, shapes)
    n = x.shape[1]
    inputs = [x]  # each layer's input
    pre: list[torch.Tensor] = []  # hidden pre-activations
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
    dz = torch.exp(logits - lse)
    dz.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(picked, -1.0))
    dz.div_(n)
    grads: list[torch.Tensor] = []
    for i in range(len(layers) - 1, -1, -1):
        weight, _ = layers[i]
        grads.append(dz.sum(dim=1))
        grads.append(torch.bmm(dz.transpose(1, 2), inputs[i]).flatten(1))
        if i > 0:
            dz = _activation_grad(torch.bmm(dz, weight), pre[i - 1], inputs[i], activation)
    grads.reverse()
    return loss, torch.cat(grads, dim=1)
