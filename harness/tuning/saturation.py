"""When has a study been tuned enough? The saturation rule, as data and as a verdict.

A study is *saturated* when more trials stopped paying: it has at least ``min_trials`` counted
trials, and the best value of the second half of them (by trial number) improves on the best of
the first half by less than the objective's tolerance, relative to the first half's best (2% for
``valid_loss``, 10% for ``train_loss``: training losses near zero move by larger fractions for
the same absolute change). Only completed, non-diverged trials have a value here; pruned,
failed and diverged ones count as trials but never as a best.

* :data:`DEFAULT_RULE` is the rule the paper suite's studies must meet;
* :func:`saturation_verdict` applies a rule to a sequence of values (pure);
* :func:`study_saturation` applies it to a study's counted trials;
* :func:`saturation_of` is the one call a report needs: ``saturation_of(storage, study_name)``
  (the study name is in every tuned row's ``tags["study"]``), so unsaturated studies can be
  flagged wherever their hyperparameters are used.

``lopt tune ... until=saturated trials=CAP`` stops at the first trial count that meets the rule,
or at ``CAP`` trials (then the study is complete but reported as not saturated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import UsageError
from harness.settings.tune import SATURATION_MIN_TRIALS
from harness.tuning.storage import open_storage
from harness.tuning.study import ATTR_TRIALS, count_trials, counted_trials, is_diverged


@dataclass(frozen=True)
class SaturationRule:
    """At least ``min_trials`` trials, and a second-half gain below the objective's tolerance."""

    min_trials: int = SATURATION_MIN_TRIALS
    valid_tolerance: float = 0.02
    train_tolerance: float = 0.10

    def tolerance(self, objective: str) -> float:
        """The largest relative gain of the second half that still counts as saturated."""
        if objective == "train_loss":
            return self.train_tolerance
        if objective == "valid_loss":
            return self.valid_tolerance
        raise UsageError(f"unknown objective {objective!r}; allowed: train_loss, valid_loss")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULE = SaturationRule()


@dataclass(frozen=True)
class Saturation:
    """The verdict on one sequence of trials (see the module docstring).

    ``gain`` is ``(first_half_best - second_half_best) / |first_half_best|`` when the second
    half is better, else 0; ``inf`` when only the second half has a value, ``nan`` when neither
    has one.
    """

    trials: int
    saturated: bool
    gain: float
    first_half_best: float
    second_half_best: float
    best: float
    tolerance: float
    min_trials: int
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def saturation_verdict(
    values: Sequence[float], objective: str, rule: SaturationRule = DEFAULT_RULE
) -> Saturation:
    """The verdict on trial values in trial order (``nan``: a trial without a usable value)."""
    tolerance = rule.tolerance(objective)
    data = np.asarray(list(values), dtype=float)
    n = len(data)
    half = n // 2
    first, second = _best(data[:half]), _best(data[half:])
    best = _best(data)
    if math.isnan(first) and math.isnan(second):
        gain = math.nan
    elif math.isnan(first):
        gain = math.inf
    elif math.isnan(second) or second >= first:
        gain = 0.0
    else:
        gain = (first - second) / max(abs(first), 1e-300)
    if n < rule.min_trials:
        saturated, verdict = False, f"not saturated: {n} of at least {rule.min_trials} trials"
    elif math.isnan(gain):
        saturated, verdict = False, "not saturated: no trial has a value"
    elif gain < tolerance:
        saturated = True
        verdict = f"saturated: the second half gained {gain:.1%} (< {tolerance:.0%})"
        if math.isnan(second):
            verdict += "; none of its trials completed (pruned or diverged)"
    else:
        saturated = False
        verdict = f"not saturated: the second half gained {gain:.1%} (>= {tolerance:.0%})"
    return Saturation(
        trials=n,
        saturated=saturated,
        gain=gain,
        first_half_best=first,
        second_half_best=second,
        best=best,
        tolerance=tolerance,
        min_trials=rule.min_trials,
        verdict=verdict,
    )


def trial_values(trials: Sequence[FrozenTrial]) -> list[float]:
    """Each trial's objective, ``nan`` unless it completed without diverging."""
    return [
        float(t.value)
        if t.state == TrialState.COMPLETE and t.value is not None and not is_diverged(t)
        else math.nan
        for t in trials
    ]


def best_so_far(values: Sequence[float]) -> np.ndarray:
    """The running minimum of ``values`` (``nan`` until the first value)."""
    data = np.asarray(list(values), dtype=float)
    filled = np.where(np.isnan(data), np.inf, data)
    running = np.minimum.accumulate(filled) if len(filled) else filled
    return np.where(np.isinf(running), np.nan, running)


def study_saturation(
    study: optuna.Study, trials: int | None = None, rule: SaturationRule = DEFAULT_RULE
) -> Saturation:
    """The verdict on ``study``'s result: its first ``trials`` counted trials (default: the
    study's own trial count, or every counted trial while it is still running)."""
    from harness.tuning.study import stored_protocol

    objective = stored_protocol(study)["objective"]
    if trials is None:
        target = int(study.user_attrs.get(ATTR_TRIALS, 0))
        trials = min(target, len(count_trials(study).counted)) if target else None
    chosen = counted_trials(study, trials if trials is not None else 10**9)
    return saturation_verdict(trial_values(chosen), objective, rule)


def saturation_of(storage: str, study: str, rule: SaturationRule = DEFAULT_RULE) -> Saturation:
    """The saturation verdict of the study named ``study`` in ``storage`` (a storage URL, as in
    ``tuning.storage``). ``UsageError`` if there is no such study."""
    opened = open_storage(storage)
    names = set(optuna.get_all_study_names(opened.storage))
    if study not in names:
        raise UsageError(f"no tuning study {study!r} in {storage}")
    return study_saturation(optuna.load_study(study_name=study, storage=opened.storage), rule=rule)


def _best(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if len(finite) else math.nan
