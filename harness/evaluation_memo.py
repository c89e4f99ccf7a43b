"""Step-0 evaluations the runner reuses: the same task instance, split and parameter bytes.

Every run evaluates its untrained parameters at step 0 (untimed). Runs on the same seed start
from the same parameters, so a tuning study's trials and a suite's entries evaluate the same
thing again and again: on the language model a whole-split evaluation of the training split
costs as much as 128 training steps, about 5 % of a train-loss trial. :func:`evaluate_initial`
remembers those evaluations.

Contract it relies on (the one :meth:`tasks.base.Task.evaluate` states): an evaluation is a
pure function of the task instance, the split and the parameters. The key is the task
instance's identity (held by a weak reference, so a memo never keeps a task or its data alive
and a new instance never sees an old one's values), the split, and a digest of every
parameter's dtype, shape and bytes, so any change to the parameters is a new key. At most
:data:`CAPACITY` evaluations are kept, least recently used first out.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

import torch

from tasks.base import Params, Task

#: how many (task, split, parameters) evaluations are kept
CAPACITY = 256

_memo: OrderedDict[tuple[int, str, str], tuple[weakref.ref[Task], dict[str, float]]] = OrderedDict()


def parameters_digest(params: Params) -> str:
    """A digest of each tensor's dtype, shape and bytes, in order (hex, 32 characters)."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in params:
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(f"{flat.dtype}{tuple(tensor.shape)};".encode())
        digest.update(flat.cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluate_initial(task: Task, params: Params, split: str) -> dict[str, float]:
    """``task.evaluate(params, split)``, or the copy of an earlier call's result with the same
    task instance, split and parameter bytes. Tasks that cannot be weakly referenced are
    evaluated every time."""
    try:
        reference = weakref.ref(task)
    except TypeError:
        return task.evaluate(params, split)
    key = (id(task), split, parameters_digest(params))
    remembered = _memo.get(key)
    if remembered is not None and remembered[0]() is task:
        _memo.move_to_end(key)
        return dict(remembered[1])
    metrics = task.evaluate(params, split)
    _memo[key] = (reference, dict(metrics))
    _memo.move_to_end(key)
    while len(_memo) > CAPACITY:
        _memo.popitem(last=False)
    return metrics


def forget() -> None:
    """Drop every remembered evaluation."""
    _memo.clear()
