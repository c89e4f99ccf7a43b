"""The held-out judge: a fixed set of tasks sampled from the family on seeds no training draw
uses (the family's own held-out sample, member seeds ``HELD_OUT_SEEDS + k``, which ``lopt bench``
can run too), each run for its whole horizon from a fresh initialisation with the current theta.

Why: the pairs of an outer step are staggered, so the outer loss falls as the problems age
even with a frozen theta; the held-out meta-loss does not move unless theta does. The set
(tasks, initialisations, horizons) is the same at every evaluation of a run, so its values are
comparable along the run.

Logged (means over the set): ``heldout_loss`` (the whole run's mean of the log of the clipped
minibatch loss: the outer loss over the whole horizon), ``heldout_final_train`` and
``heldout_final_valid`` (the log of the whole-split loss at the end of the run), and
``heldout_loss_se``, the standard error of ``heldout_loss`` over the set's tasks (their spread
over sqrt(count)). Untimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.meta.family.pairs import PairSchedule
from harness.meta.family.problems import (
    Rows,
    advance,
    family_task,
    initial_rows,
    outer_loss,
    whole_split_losses,
)
from harness.meta.truncation import derive_seed
from harness.meta.world import World

STREAM_HELDOUT_INIT = 27
STREAM_HELDOUT_HORIZON = 28
HELDOUT_METRICS = ("heldout_loss", "heldout_final_train", "heldout_final_valid")


@dataclass(frozen=True)
class HeldOutSet:
    """``count`` tasks of ``schedule.family`` with their initialisation seeds and horizons.

    With the schedule's ``arch_groups = A`` member ``k`` has the architecture that the held-out
    seed ``HELD_OUT_SEEDS + k % A`` draws (A architectures, each batched; 32 single-row batches
    cost 7x more: 119 s against about 17 s for 32 tasks of mlp_mix on one loaded core); without,
    its own (``HELD_OUT_SEEDS + k``, the family's own held-out sample).
    """

    schedule: PairSchedule
    count: int

    def member(self, k: int) -> tuple[Any, int, int]:
        """Task, initialisation seed and horizon of member ``k``."""
        from tasks.families import HELD_OUT_SEEDS

        groups = self.schedule.arch_groups
        arch = None if groups is None else HELD_OUT_SEEDS + k % groups
        task = family_task(self.schedule.family, HELD_OUT_SEEDS + k, arch)
        init = derive_seed(self.schedule.seed, STREAM_HELDOUT_INIT, k)
        return task, init, self.schedule.horizon(k, 0, stream=STREAM_HELDOUT_HORIZON)

    def evaluate(self, learner: Any, theta: torch.Tensor, world: World | None = None) -> dict:
        """Run this rank's members (``k = rank, rank + size, ...``) with ``theta`` for their whole
        horizons; returns the means over the whole set (all-reduced)."""
        world = world or World()
        totals = torch.zeros(len(HELDOUT_METRICS) + 1, dtype=torch.float64)  # + sum of squares
        mine = list(range(world.rank, self.count, world.size))
        for _, loss, train, valid in self.finished(learner, theta, mine):
            totals[0] += loss
            totals[3] += loss**2
            totals[1] += train
            totals[2] += valid
        totals = world.all_reduce_sum(totals) / self.count
        out = {name: float(v) for name, v in zip(HELDOUT_METRICS, totals[:3], strict=True)}
        spread = max(0.0, float(totals[3]) - out["heldout_loss"] ** 2) * self.count
        out["heldout_loss_se"] = (spread / max(1, self.count - 1)) ** 0.5 / self.count**0.5
        return out

    def per_task(self, learner: Any, theta: torch.Tensor) -> torch.Tensor:
        """``[count, 3]`` float64, in one process: member ``k``'s ``heldout_loss``,
        ``heldout_final_train`` and ``heldout_final_valid`` (the values :meth:`evaluate`
        averages), for paired comparisons of thetas on the same tasks."""
        out = torch.full((self.count, len(HELDOUT_METRICS)), float("nan"), dtype=torch.float64)
        for k, loss, train, valid in self.finished(learner, theta, list(range(self.count))):
            out[k, 0], out[k, 1], out[k, 2] = loss, train, valid
        return out

    def finished(self, learner: Any, theta: torch.Tensor, members: list[int]) -> list[tuple]:
        """Run ``members`` with ``theta`` for their whole horizons (batched, no gradients);
        ``(k, heldout_loss, final train log-loss, final valid log-loss)`` in the order they end."""
        ended: list[tuple] = []
        runs = [self.member(k) for k in members]
        tasks = [m[0] for m in runs]
        inits = [m[1] for m in runs]
        ws, states = initial_rows(learner, tasks, inits)
        rows = Rows(tasks, inits, ws, states, [0] * len(members), [m[2] for m in runs])
        loss_sum = torch.zeros(len(members), dtype=torch.float64)
        active = list(range(len(members)))
        truncation = self.schedule.truncation
        with torch.no_grad():
            while active:
                part = rows.subset(active)
                part, losses = advance(learner, part, theta.expand(len(active), -1), truncation)
                loss_sum[active] += outer_loss(losses, self.schedule.loss_floor) * truncation
                for n, j in enumerate(active):
                    rows.w[j], rows.state[j], rows.step[j] = part.w[n], part.state[n], part.step[n]
                done = [j for j in active if rows.step[j] >= rows.horizon[j]]
                if done:
                    finished = rows.subset(done)
                    train = whole_split_losses(finished, "train").clamp_min(1e-8).log()
                    valid = whole_split_losses(finished, "valid").clamp_min(1e-8).log()
                    for n, j in enumerate(done):
                        ended.append(
                            (members[j], loss_sum[j] / rows.horizon[j], train[n], valid[n])
                        )
                active = [j for j in active if rows.step[j] < rows.horizon[j]]
        return ended
