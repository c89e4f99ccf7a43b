"""The family evaluation sample: held-out family tasks no meta-training run ever saw.

Three disjoint ranges of a family's member seeds:

* ``[0, HELD_OUT_SEEDS)``: what meta-training draws (:func:`~harness.meta.family.problems.
  training_seed`);
* ``[HELD_OUT_SEEDS, HELD_OUT_SEEDS + heldout_tasks)``: the meta-training's own held-out judge
  (:class:`~harness.meta.family.heldout.HeldOutSet`, 32 tasks by default), which a run watches
  and so, through checkpoint choice, is not clean;
* ``[EVAL_FIRST_SEED, ...)``: this sample (``EVAL_FIRST_SEED = HELD_OUT_SEEDS + 100_000``), for
  ``lopt evaluate-family`` and anything else that reports on unseen tasks (the performance
  profiles reuse it). A judge of fewer than ``EVAL_FIRST_SEED - HELD_OUT_SEEDS`` tasks never
  touches it (:func:`check_disjoint`).

Member ``k`` is the family's task on member seed ``EVAL_FIRST_SEED + k`` (its own architecture:
one seed fixes both, as :func:`tasks.families.sample_tasks`). Evaluation seed ``s`` is the
task's initialisation and data-order seed, exactly as ``lopt bench task=FAMILY
task.member=EVAL_FIRST_SEED+k`` trains it on seed ``s``; so any run here can be repeated one
task at a time with ``lopt bench``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError
from harness.meta.family.problems import family_task
from tasks.families.base import HELD_OUT_SEEDS

#: the first member seed of the evaluation sample
EVAL_FIRST_SEED = HELD_OUT_SEEDS + 100_000


@dataclass(frozen=True)
class EvalSample:
    """``count`` tasks of ``family`` (members ``EVAL_FIRST_SEED + k``), each trained on the
    evaluation seeds ``first_seed .. first_seed + seeds - 1`` for ``steps`` inner steps."""

    family: str
    count: int
    seeds: int = 10
    steps: int = 1000
    first_seed: int = 0

    def member_seed(self, k: int) -> int:
        """Member seed of task ``k`` (``0 <= k < count``)."""
        if not 0 <= k < self.count:
            raise IndexError(f"task {k} of an evaluation sample of {self.count}")
        return EVAL_FIRST_SEED + k

    def task(self, k: int) -> Any:
        """The :class:`~tasks.families.base.FamilyTask` of member ``k`` (cached)."""
        return family_task(self.family, self.member_seed(k))

    def init_seeds(self) -> list[int]:
        """The evaluation seeds: each one a task's initialisation and data order."""
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def members(self) -> list[int]:
        """The member seeds, in order."""
        return [self.member_seed(k) for k in range(self.count)]


def check_disjoint(heldout_tasks: int) -> None:
    """One-line ``UsageError`` when a judge of ``heldout_tasks`` tasks would reach this sample."""
    room = EVAL_FIRST_SEED - HELD_OUT_SEEDS
    if heldout_tasks >= room:
        raise UsageError(
            f"the run's held-out judge has {heldout_tasks} tasks and reaches the evaluation "
            f"sample (member seeds from {EVAL_FIRST_SEED}); it must have fewer than {room}"
        )
