"""One trial's objective: train the configuration on the tuning seeds and score it.

The objective is the loss on the protocol's split (``valid`` for ``valid_loss``, ``train`` for
``train_loss``), evaluated over the whole split, at the end of the step budget (``final``) or the
lowest along the run (``best``), averaged over the tuning seeds. After every evaluation the value
so far is reported to the trial (step ``seed_index * budget + step``; step 0 only for the first
seed), so a pruner can stop a hopeless trial. A run that diverges raises
:class:`TrialDiverged`, which carries the value the trial is told instead
(:func:`divergence_penalty`).
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from harness.results.schema import STATUS_DIVERGED
from harness.runner import run
from harness.tuning.study import Protocol
from tasks.base import Task


class TrialDiverged(Exception):
    """The configuration diverged on a tuning seed; the message says where, ``penalty`` is the
    value the trial is told (``inf`` if the run saw no finite loss at all)."""

    def __init__(self, message: str, penalty: float) -> None:
        super().__init__(message)
        self.penalty = penalty


def divergence_penalty(seen: list[float]) -> float:
    """The objective a diverged run is given: the worst finite loss of the objective's split seen
    along it, step 0 (the untrained model) included, so never better than not training at all
    (``inf`` when there is none)."""
    finite = [v for v in seen if math.isfinite(v)]
    return max(finite) if finite else math.inf


def evaluate_configuration(
    task: Task, protocol: Protocol, hparams: dict[str, Any], trial: optuna.Trial | None = None
) -> float:
    """The objective of ``hparams`` under ``protocol`` (lower is better)."""
    split = protocol.split
    scores = []
    for index, seed in enumerate(protocol.seeds):
        best = math.inf
        seen: list[float] = []

        def on_eval(
            step: int,
            measured: dict[str, dict[str, float]],
            index: int = index,
            seed: int = seed,
            seen: list[float] = seen,
        ) -> None:
            nonlocal best
            value = measured[split]["loss"]
            seen.append(value)
            if not math.isfinite(value):
                return
            best = min(best, value)
            if trial is None or (index > 0 and step == 0):
                return  # a later seed's step 0 would take the previous seed's last step number
            trial.report(
                value if protocol.objective_at == "final" else best,
                step=index * protocol.budget_steps + step,
            )
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} of tuning seed {seed}")

        result = run(
            task,
            protocol.optimizer,
            hparams,
            steps=protocol.budget_steps,
            seed=seed,
            eval_every=protocol.eval_every,
            suite="tune",
            task_cfg=protocol.task_cfg,
            eval_splits=(split,),
            warmup_steps=1,
            log_every=protocol.budget_steps,
            on_eval=on_eval,
        )
        if result.status == STATUS_DIVERGED:
            raise TrialDiverged(
                f"diverged at step {result.steps_done} with tuning seed {seed}",
                divergence_penalty(seen),
            )
        scores.append(result.final(split) if protocol.objective_at == "final" else best)
    return sum(scores) / len(scores)
