"""B inner problems of one architecture as one set of batched tensor operations.

A :class:`ProblemBatch` holds B :class:`~tasks.families.base.FamilyTask` of one
``group_key`` (their datasets and rescalings may differ), each with its own initialisation
seed. Problem ``i`` with seed ``s`` is exactly the ordinary task ``build_task(tasks[i])``
trained from ``s`` as ``lopt bench`` trains it: initial parameters ``init_params(s)``,
minibatches ``batches("train", s)`` (its shuffled epochs), the loss of the rescaled model.

Parameters are rows of a flat ``[B, N]`` tensor (``segments``: the tensor lengths, in the
model's parameter order). Two backends compute the minibatch loss and gradient:

* ``hand`` (MLPs): :mod:`~harness.meta.batched.mlp`, ``baddbmm`` forward and closed-form
  backward; the default for MLPs (faster than ``vmap``: docs/batched-engine.md);
* ``vmap`` (any architecture; the default for conv nets):
  :mod:`~harness.meta.batched.functional`.

Nothing here is timed or random beyond the problems' own seeds; nothing keeps autograd history
but :meth:`ProblemBatch.minibatch_loss` with autograd on
(:mod:`~harness.meta.batched.differentiable`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from harness.meta.batched.functional import FunctionalModel
from harness.meta.batched.mlp import cross_entropy_rows, mlp_logits, mlp_loss_and_grad
from tasks.base import SPLITS
from tasks.families.base import FamilyTask, group_tasks
from tasks.families.datasets import family_splits
from tasks.families.member import build_model

BACKENDS = ("auto", "hand", "vmap")
#: the splits an outer loss may be measured on (minibatches: :meth:`ProblemBatch.batch_indices`)
OUTER_SPLITS = ("train", "valid")
#: mixed into a problem's seed for its validation minibatch order
VALID_ORDER_STREAM = 0x5A11D
EVAL_EXAMPLES = 512  # examples per forward pass in eval_loss
EVAL_ROWS = 64  # problems per forward pass in eval_loss


class DataOrder:
    """The minibatch indices of ``ClassificationTask.batches("train", seed)``, by step.

    Epoch ``e`` is the ``e``-th ``torch.randperm(n)`` of a generator seeded with ``seed``; step
    ``t`` takes positions ``[(t % k) * size, (t % k + 1) * size)`` of epoch ``t // k`` (``k =
    n // size``; the last partial batch of each epoch is dropped). Keeps the current epoch, so
    steps that move forward cost one ``randperm`` per epoch.
    """

    def __init__(self, seed: int, n: int, batch_size: int) -> None:
        self.seed = seed
        self.n = n
        self.size = min(batch_size, n)
        self.per_epoch = n // self.size
        self._generator: torch.Generator | None = None
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _advance_to(self, epoch: int) -> None:
        if self._generator is None or self._epoch > epoch:
            self._generator = torch.Generator().manual_seed(self.seed)
            self._epoch = -1
        while self._epoch < epoch:
            self._perm = torch.randperm(self.n, generator=self._generator)
            self._epoch += 1

    def indices(self, start: int, count: int) -> torch.Tensor:
        """``[count, size]`` int64: the batches of steps ``start .. start + count - 1``."""
        parts = []
        step = start
        while step < start + count:
            epoch, pos = divmod(step, self.per_epoch)
            self._advance_to(epoch)
            take = min(self.per_epoch - pos, start + count - step)
            parts.append(self._perm[pos * self.size : (pos + take) * self.size])
            step += take
        return torch.cat(parts).view(count, self.size)


class ProblemBatch:
    """B problems of one architecture (one ``group_key``), advanced together.

    Args:
        tasks: the B family tasks (same ``group_key``; ``ValueError`` otherwise).
        init_seeds: one seed per problem: its initial parameters and its data order.
        split_seed: the datasets' train/valid/test split (as the tasks' ``split_seed``).
        dtype: of parameters, data and losses (float64 for exact comparisons).
        device: where the tensors live.
        backend: ``hand`` (MLPs only), ``vmap``, or ``auto`` (``hand`` for MLPs, else ``vmap``).

    Attributes:
        segments: the parameter tensors' lengths in the flat row layout (sum: ``num_params``).
        shapes: the parameter tensors' shapes.
        size: B.
    """

    def __init__(
        self,
        tasks: Sequence[FamilyTask],
        init_seeds: Sequence[int],
        *,
        split_seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        tasks = tuple(tasks)
        if not tasks or len(tasks) != len(init_seeds):
            raise ValueError(f"need one init seed per task: {len(tasks)} tasks, {len(init_seeds)}")
        keys = {t.group_key for t in tasks}
        if len(keys) > 1:
            raise ValueError(f"a ProblemBatch holds one architecture; got {sorted(map(str, keys))}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        spec = tasks[0]
        if backend == "auto":
            backend = "hand" if spec.kind == "mlp" else "vmap"
        if backend == "hand" and spec.kind != "mlp":
            raise ValueError("the hand backend computes MLPs only; use backend=vmap")
        self.tasks = tasks
        self.spec = spec
        self.backend = backend
        self.size = len(tasks)
        self.dtype = dtype
        self.device = torch.device(device)
        self.split_seed = split_seed
        self.shapes = spec.shapes
        self.segments: tuple[int, ...] = tuple(math.prod(s) for s in self.shapes)
        self.num_params = sum(self.segments)
        self._functional = FunctionalModel(spec) if backend == "vmap" else None
        self._load_data()
        # float32 scales (as SampledTask's), so both compute with the same values
        scales = torch.tensor(
            [
                [s for s, n in zip(t.param_scale, self.segments, strict=True) for _ in range(n)]
                for t in tasks
            ],
            dtype=torch.float32,
        )
        self._rescaled = bool((scales != 1).any())
        self._scale32 = scales if self._rescaled else None
        self._scale = scales.to(dtype=dtype, device=self.device) if self._rescaled else None
        self.seeds = [int(s) for s in init_seeds]
        self._orders = [self._order(i) for i in range(self.size)]
        self._valid: dict[int, tuple[int, DataOrder]] = {}  # row -> (seed, its valid order)

    # -- data ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
        """Each split of the distinct datasets, concatenated: inputs in the model's layout
        (flat for ``hand``), labels, and per problem the offset and size of its dataset."""
        names = list(dict.fromkeys(t.dataset for t in self.tasks))
        self._datasets = names
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ranges: dict[str, list[tuple[int, int]]] = {}
        for split in SPLITS:
            inputs, labels, ranges, offset = [], [], [], 0
            for name in names:
                x, y = getattr(family_splits(name, self.split_seed), split)
                x_t = torch.as_tensor(x, dtype=self.dtype)
                if self.backend == "hand":
                    x_t = x_t.flatten(1)
                inputs.append(x_t)
                labels.append(torch.as_tensor(y, dtype=torch.long))
                ranges.append((offset, len(y)))
                offset += len(y)
            self._data[split] = (
                torch.cat(inputs).to(self.device),
                torch.cat(labels).to(self.device),
            )
            self._ranges[split] = ranges
        self._row_dataset = [names.index(t.dataset) for t in self.tasks]
        train = self._ranges["train"]
        self._offsets = torch.tensor(
            [train[d][0] for d in self._row_dataset], dtype=torch.long, device=self.device
        )

    def _order(self, row: int) -> DataOrder:
        _, n = self._ranges["train"][self._row_dataset[row]]
        return DataOrder(self.seeds[row], n, self.spec.batch_size)

    def batch_indices(
        self, step: torch.Tensor | Sequence[int], num_steps: int, split: str = "train"
    ) -> torch.Tensor:
        """``[num_steps, B, batch]`` int64 rows of the concatenated ``split`` inputs: problem
        i's minibatches of its steps ``step[i] .. step[i] + num_steps - 1``.

        ``train``: the task's own shuffled epochs (``batches("train", seed)``). ``valid``: the
        same construction over the validation split, with the order seeded by the problem's
        seed mixed with :data:`VALID_ORDER_STREAM` (so the two rows of an antithetic pair, same
        seed and step, see the same validation minibatches: the outer-valid objective's)."""
        if split not in OUTER_SPLITS:
            raise ValueError(f"split must be one of {', '.join(OUTER_SPLITS)}, got {split!r}")
        steps = step.tolist() if isinstance(step, torch.Tensor) else list(step)
        orders = self._orders if split == "train" else self._valid_orders()
        local = torch.stack(
            [order.indices(int(s), num_steps) for order, s in zip(orders, steps, strict=True)],
            dim=1,
        ).to(self.device)
        offsets = self._offsets if split == "train" else self._split_offsets(split)
        return local + offsets.view(1, -1, 1)

    def _valid_orders(self) -> list[DataOrder]:
        """Each problem's validation order (rebuilt for a problem whose seed changed)."""
        orders = self._valid
        out = []
        for row in range(self.size):
            seed = self.seeds[row]
            found = orders.get(row)
            if found is None or found[0] != seed:
                _, n = self._ranges["valid"][self._row_dataset[row]]
                mixed = (seed * 1_000_003 + VALID_ORDER_STREAM) % (2**63 - 1)
                found = orders[row] = (seed, DataOrder(mixed, n, self.spec.batch_size))
            out.append(found[1])
        return out

    def _split_offsets(self, split: str) -> torch.Tensor:
        ranges = self._ranges[split]
        return torch.tensor(
            [ranges[d][0] for d in self._row_dataset], dtype=torch.long, device=self.device
        )

    def minibatch(
        self, indices: torch.Tensor, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[B, batch, ...]`` (flat for ``hand``) and labels ``[B, batch]`` of rows
        ``indices`` ``[B, batch]`` of :meth:`batch_indices` (of the same ``split``)."""
        inputs, labels = self._data[split]
        flat = indices.reshape(-1)  # index_select: ~10x faster than inputs[indices] here
        x = inputs.index_select(0, flat).view(*indices.shape, *inputs.shape[1:])
        y = labels.index_select(0, flat).view(indices.shape)
        return x, y

    def effective(self, w: torch.Tensor) -> torch.Tensor:
        """The model's weights of the optimizer's variables ``w`` [B, N] (the rescaling;
        out of place, so differentiable)."""
        return w * self._scale if self._scale is not None else w

    def minibatch_loss(
        self, w: torch.Tensor, indices: torch.Tensor, split: str = "valid"
    ) -> torch.Tensor:
        """Each problem's mean cross-entropy ``[B]`` on its minibatch ``indices`` of ``split``
        (forward only; differentiable in ``w`` when autograd is on)."""
        x, y = self.minibatch(indices, split)
        w_eff = self.effective(w)
        if self._functional is not None:
            return torch.func.vmap(self._functional.loss)(w_eff, x, y)
        logits = mlp_logits(w_eff, x, self.shapes, self.spec.activation)
        return cross_entropy_rows(logits, y).mean(dim=1)

    @property
    def functional(self) -> FunctionalModel | None:
        """The ``vmap`` backend's model (None for ``hand``)."""
        return self._functional

    def reseed(self, rows: Sequence[int], init_seeds: Sequence[int]) -> torch.Tensor:
        """Give problems ``rows`` new seeds (a reset: new init and data order); returns their
        fresh parameters ``[len(rows), N]``."""
        for row, seed in zip(rows, init_seeds, strict=True):
            self.seeds[row] = int(seed)
            self._orders[row] = self._order(row)
        return self._init_rows(list(rows))

    # -- parameters ---------------------------------------------------------------------------
    def _init_rows(self, rows: Sequence[int]) -> torch.Tensor:
        out = []
        for row in rows:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seeds[row])
                model = build_model(self.tasks[row])
            out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        w = torch.stack(out)  # float32, as the model's: the same values as SampledTask's
        if self._scale32 is not None:
            w = w / self._scale32[list(rows)]
        return w.to(dtype=self.dtype, device=self.device)

    def init_params(self) -> torch.Tensor:
        """``[B, N]``: each problem's initial parameters (its seed's standard initialisation,
        divided by its scales: ``build_task(task).init_params(seed)``, flattened)."""
        return self._init_rows(range(self.size))

    def unflatten(self, w_row: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One row ``(N,)`` as the task's parameter tuple (views)."""
        return tuple(
            part.view(shape)
            for part, shape in zip(torch.split(w_row, self.segments), self.shapes, strict=True)
        )

    # -- losses -------------------------------------------------------------------------------
    def loss_and_grad(
        self, w: torch.Tensor, step: torch.Tensor, *, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each problem's minibatch loss ``[B]`` at its step and the gradient ``[B, N]``.

        Args:
            w: ``[B, N]`` parameters (the optimizer's variables, before rescaling).
            step: ``[B]`` int64, each problem's inner step (selects its minibatch).
            indices: ``[B, batch]``, this step's rows of :meth:`batch_indices` (computed from
                ``step`` if None; :func:`~harness.meta.batched.unroll` passes them).

        The loss is the plain mean cross-entropy (no clipping); no autograd graph is kept.
        """
        if indices is None:
            indices = self.batch_indices(step, 1)[0]
        inputs, labels = self._data["train"]
        flat = indices.reshape(-1)  # index_select: ~10x faster than inputs[indices] here
        x = inputs.index_select(0, flat).view(*indices.shape, *inputs.shape[1:])
        y = labels.index_select(0, flat).view(indices.shape)
        w_eff = w * self._scale if self._scale is not None else w
        with torch.no_grad():
            if self._functional is not None:
                loss, grad = self._functional.loss_and_grad(w_eff, x, y)
            else:
                loss, grad = mlp_loss_and_grad(w_eff, x, y, self.shapes, self.spec.activation)
        if self._scale is not None:
            grad = grad.mul_(self._scale)
        return loss, grad

    @torch.no_grad()
    def eval_loss(self, w: torch.Tensor, split: str) -> torch.Tensor:
        """Each problem's mean cross-entropy over its dataset's whole ``split`` (``train``,
        ``valid`` or ``test``): ``[B]`` float64."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
        w_eff = w * self._scale if self._scale is not None else w
        inputs, labels = self._data[split]
        totals = torch.zeros(self.size, dtype=torch.float64, device=w.device)
        for d, (offset, n) in enumerate(self._ranges[split]):
            rows = torch.tensor(
                [i for i, r in enumerate(self._row_dataset) if r == d], device=w.device
            )
            for r0 in range(0, len(rows), EVAL_ROWS):
                chunk_rows = rows[r0 : r0 + EVAL_ROWS]
                w_chunk = w_eff[chunk_rows]
                for start in range(offset, offset + n, EVAL_EXAMPLES):
                    stop = min(start + EVAL_EXAMPLES, offset + n)
                    logits = self._logits(w_chunk, inputs[start:stop])
                    y = labels[start:stop].expand(len(chunk_rows), -1)
                    totals[chunk_rows] += cross_entropy_rows(logits, y).double().sum(dim=1)
            totals[rows] /= n
        return totals

    def _logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, n, classes]`` of the rows ``w`` [b, N] on shared inputs ``x``."""
        if self._functional is not None:
            return self._functional.logits_shared(w, x)
        return mlp_logits(w, x.expand(w.shape[0], -1, -1), self.shapes, self.spec.activation)

    def describe(self) -> dict[str, Any]:
        """Plain data: the group key, B, N, the backend and the datasets."""
        return {
            "group_key": list(self.spec.group_key),
            "problems": self.size,
            "num_params": self.num_params,
            "backend": self.backend,
            "datasets": self._datasets,
        }


def problem_batches(
    tasks: Sequence[FamilyTask], init_seeds: Sequence[int], **options: Any
) -> list[tuple[list[int], ProblemBatch]]:
    """Problems of different architectures, grouped: ``(indices into tasks, ProblemBatch)``
    per ``group_key``, in first-seen order; ``options`` go to every :class:`ProblemBatch`."""
    if len(tasks) != len(init_seeds):
        raise ValueError(f"need one init seed per task: {len(tasks)} tasks, {len(init_seeds)}")
    return [
        (rows, ProblemBatch([tasks[i] for i in rows], [init_seeds[i] for i in rows], **options))
        for rows in group_tasks(tasks).values()
    ]
