"""Task families: samplers of task configurations from a seed (issue 24).

A family draws a :class:`FamilyTask` (dataset, architecture, batch size and a Celo-style random
rescaling of each parameter tensor) from two seeds:

* ``arch_seed`` fixes the *architecture*: kind (``mlp`` or ``conv``), image size, hidden widths
  (or conv channels), activation and batch size, i.e. :attr:`FamilyTask.group_key`. Problems
  with the same key run together in one :class:`harness.meta.batched.ProblemBatch`.
* ``seed`` (the member seed) fixes the rest: which dataset of that image size, and the
  per-tensor scales.

``sample_tasks(family, seeds)`` uses each seed for both (one task per seed);
``sample_group(family, arch_seed, seeds)`` draws members that share one architecture, so a
meta-training step can batch many of them. Both are deterministic: the same arguments give the
same tasks on every machine (numpy ``default_rng([seed, stream])``, no global state).

Rescaling (Celo, Moudgil et al. 2025, ``celo/tasks.py``, here per tensor): the optimizer's
variable for tensor k is ``p_k`` and the model uses ``scale_k * p_k``; the initial ``p_k`` is
the standard initialisation divided by ``scale_k``, so the function at initialisation does not
change but the gradient in ``p_k`` is ``scale_k`` times that in the model's weight and a step of
size ``lr`` in ``p_k`` moves the weight by ``scale_k * lr``.

A sampled task is also an ordinary task: :func:`tasks.families.member.build_task` returns it
as a :class:`tasks.base.Task`, and :func:`tasks.families.member.register_family` registers the
family as the task plugin ``task=FAMILY`` with the settings ``member`` (the member seed) and
``arch`` (the architecture seed; ``-1``: the member seed). So ``lopt bench task=mlp_mix
task.member=7`` runs any optimizer on one member, and ``lopt bench -m task=mlp_mix
task.member=1000000,1000001,...`` on a held-out sample (:data:`HELD_OUT_SEEDS`; meta-training
should draw its seeds below it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harness.errors import UsageError
from harness.registry import FAMILIES
from tasks.families.datasets import DATASETS, NUM_CLASSES

KINDS = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "gelu")
#: the first seed of the held-out members: meta-training draws its seeds below it, and
#: ``range(HELD_OUT_SEEDS, HELD_OUT_SEEDS + n)`` is a family's fixed held-out sample of size n
HELD_OUT_SEEDS = 1_000_000
# numpy default_rng streams
STREAM_ARCH = 1
STREAM_MEMBER = 2


@dataclass(frozen=True)
class FamilyTask:
    """One sampled task configuration (plain data; hashable).

    Attributes:
        family: the family that sampled it.
        seed: the member seed (dataset, scales).
        arch_seed: the architecture seed (everything in :attr:`group_key`).
        dataset: a name of :data:`tasks.families.datasets.DATASETS`.
        kind: ``mlp`` (flattened image -> hidden layers -> 10) or ``conv`` (3x3 stride-2
            convolutions with padding 1, then global average pooling and a linear head).
        image_size: the side of the square input images (8 or 16).
        hidden: the MLP's hidden widths, or the conv net's channels per convolution.
        activation: ``relu``, ``tanh`` or ``gelu`` (exact, erf form).
        batch_size: examples per training minibatch.
        param_scale: one scale per parameter tensor, in the model's parameter order (weight,
            bias, weight, bias, ...); see the module docstring.
    """

    family: str
    seed: int
    arch_seed: int
    dataset: str
    kind: str
    image_size: int
    hidden: tuple[int, ...]
    activation: str
    batch_size: int
    param_scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.activation not in ACTIVATIONS or not self.hidden:
            raise ValueError(f"invalid family task {self}")
        if self.dataset not in DATASETS or DATASETS[self.dataset] != self.image_size:
            raise ValueError(f"dataset {self.dataset!r} does not have {self.image_size}px images")
        if len(self.param_scale) != len(self.shapes) or self.batch_size < 1:
            raise ValueError(f"invalid family task {self}")

    @property
    def name(self) -> str:
        """``family:arch_seed:seed`` (``family:seed`` when the two seeds agree)."""
        if self.arch_seed == self.seed:
            return f"{self.family}:{self.seed}"
        return f"{self.family}:{self.arch_seed}:{self.seed}"

    @property
    def input_size(self) -> int:
        """Pixels per image (the MLP's input width)."""
        return self.image_size * self.image_size

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def group_key(self) -> tuple[Any, ...]:
        """What problems batched together must share: kind, image size, hidden, activation and
        batch size (the dataset and the scales may differ)."""
        return (self.kind, self.image_size, self.hidden, self.activation, self.batch_size)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The parameter tensors' shapes, in the model's order (nn.Linear / nn.Conv2d layout)."""
        shapes: list[tuple[int, ...]] = []
        if self.kind == "mlp":
            widths = (self.input_size, *self.hidden, NUM_CLASSES)
            for fan_in, fan_out in itertools.pairwise(widths):
                shapes += [(fan_out, fan_in), (fan_out,)]
        else:
            channels = (1, *self.hidden)
            for c_in, c_out in itertools.pairwise(channels):
                shapes += [(c_out, c_in, 3, 3), (c_out,)]
            shapes += [(NUM_CLASSES, self.hidden[-1]), (NUM_CLASSES,)]
        return tuple(shapes)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


class Family:
    """Base class of a task-family plugin: a sampler of :class:`FamilyTask` from seeds.

    A subclass implements :meth:`sample_architecture` and :meth:`sample_member`, each drawing
    from the numpy generator it is given (and nothing else), and registers with
    :func:`register_family`. Class attribute: ``default_steps``, the step budget ``lopt bench``
    gives a member task.
    """

    family: ClassVar[str] = ""
    default_steps: ClassVar[int] = 1000

    def sample_architecture(self, rng: np.random.Generator) -> dict[str, Any]:
        """The :attr:`FamilyTask.group_key` fields: ``kind``, ``image_size``, ``hidden``,
        ``activation``, ``batch_size``."""
        raise NotImplementedError

    def sample_member(
        self, rng: np.random.Generator, architecture: dict[str, Any]
    ) -> dict[str, Any]:
        """The rest, for that architecture: ``dataset`` and ``param_scale``."""
        raise NotImplementedError

    def sample(self, seed: int, arch_seed: int | None = None) -> FamilyTask:
        """The member ``seed`` of the architecture ``arch_seed`` (default: ``seed``)."""
        arch_seed = seed if arch_seed is None else arch_seed
        for what, value in (("seed", seed), ("arch_seed", arch_seed)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise UsageError(f"{self.family}: {what} must be an integer >= 0, got {value!r}")
        architecture = self.sample_architecture(
            np.random.default_rng([int(arch_seed), STREAM_ARCH])
        )
        member = self.sample_member(np.random.default_rng([int(seed), STREAM_MEMBER]), architecture)
        return FamilyTask(
            family=self.family, seed=int(seed), arch_seed=int(arch_seed), **architecture, **member
        )


def create_family(name: str) -> Family:
    """The family registered as ``name`` (an unknown name is a one-line ``UsageError``)."""
    return FAMILIES.get(name).factory()


def sample_tasks(family: str, seeds: Sequence[int]) -> list[FamilyTask]:
    """One task per seed (the seed fixes both the architecture and the member)."""
    sampler = create_family(family)
    return [sampler.sample(int(s)) for s in seeds]


def sample_group(family: str, arch_seed: int, seeds: Sequence[int]) -> list[FamilyTask]:
    """One task per member seed, all of the architecture that ``arch_seed`` draws (one
    :attr:`FamilyTask.group_key`)."""
    sampler = create_family(family)
    return [sampler.sample(int(s), arch_seed=int(arch_seed)) for s in seeds]


def group_tasks(tasks: Sequence[FamilyTask]) -> dict[tuple[Any, ...], list[int]]:
    """The indices of ``tasks`` by :attr:`FamilyTask.group_key`, in first-seen order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task.group_key, []).append(i)
    return groups


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One draw, log-uniform in ``[low, high]``."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))
