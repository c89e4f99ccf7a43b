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

**The confirmation.** The best value of many trials is an extreme of noisy draws: near the
stability edge the final training loss on one tuning seed varies about 2x from one learning rate
to the next (mnist5k_cnn16: nesterov's 10 best of 128 trials, all within 20% of one learning
rate, range over 6.6e-6 .. 1.6e-5), so a sampler that keeps drawing near the optimum keeps
finding a luckier draw, and the halves' bests differ by more than any tolerance while the
expected loss has long stopped improving. When the values alone fail the rule, the tuner can
re-run the first half's best and the second half's best on ``confirm_seeds`` fresh seeds
(:data:`CONFIRM_SEED_OFFSET` + k, the same for both: a paired comparison) and store them with
the study (:class:`Confirmation`). The study is then saturated unless the second half's
configuration is better by at least the tolerance *and* by more than twice the standard error
of the paired differences: more trials paid only if what they found is measurably better.

**The choice.** The same re-runs decide which configuration is the study's result
(:func:`chosen_trial`): of the two re-run trials, the one with the lower fresh-seed mean, not
the one with the lower tuning value. The best value near the stability edge can be a rate that
blows up on other seeds (mnist5k_cnn16 ``sgd``, train loss: the best value, lr 1.70, ended at
1.6e3 and 2.3 on two of the four fresh seeds, while the first half's best, lr 1.02, stayed below
2e-4 on all four); a study without a confirmation keeps the best value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import UsageError
from harness.settings.tune import SATURATION_MIN_TRIALS
from harness.tuning.storage import open_storage
from harness.tuning.study import ATTR_TRIALS, count_trials, counted_trials, is_diverged

#: seeds of the confirmation runs: ``CONFIRM_SEED_OFFSET + k`` (the tuning seeds are 0 .. N-1,
#: the re-evaluation of the winner uses 1000 + k)
CONFIRM_SEED_OFFSET = 2000
#: the study attribute holding the latest :class:`Confirmation` (as a dict)
ATTR_CONFIRMATION = "confirmation"


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


@dataclass(frozen=True)
class Confirmation:
    """The halves' best configurations re-run on the same fresh seeds, at a trial count.

    ``first_trial`` / ``second_trial``: the trial numbers of the first and the second half's
    best; ``first_values`` / ``second_values``: their objective on each of ``seeds`` (a run that
    diverged scores its divergence penalty, or ``inf``)."""

    trials: int
    first_trial: int
    second_trial: int
    seeds: list[int]
    first_values: list[float]
    second_values: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def mean_of(self, number: int) -> float | None:
        """Trial ``number``'s mean over the fresh seeds, or ``None`` if it was not re-run."""
        values = {self.first_trial: self.first_values, self.second_trial: self.second_values}
        return float(np.mean(values[number])) if number in values else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Confirmation:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def halves_best(trials: Sequence[FrozenTrial]) -> tuple[FrozenTrial | None, FrozenTrial | None]:
    """The best trial (by value; ``None`` if none has one) of the first and of the second half
    of ``trials`` (counted trials in trial order), as :func:`saturation_verdict` splits them."""
    half = len(trials) // 2
    values = trial_values(trials)

    def best(start: int, stop: int) -> FrozenTrial | None:
        usable = [i for i in range(start, stop) if math.isfinite(values[i])]
        return trials[min(usable, key=lambda i: values[i])] if usable else None

    return best(0, half), best(half, len(trials))


def confirmed_verdict(values_verdict: Saturation, confirmation: Confirmation) -> Saturation:
    """The verdict once the halves' bests were re-run (see the module docstring): saturated
    unless the second's mean is lower by ``>= tolerance`` of the first's mean *and* by more than
    twice the standard error of the paired differences (the tolerance is ``values_verdict``'s).
    ``gain`` becomes the re-run gain (0 when the second did worse: the verdict says by how much)."""
    first = np.asarray(confirmation.first_values, dtype=float)
    second = np.asarray(confirmation.second_values, dtype=float)
    k = len(first)
    first_mean, second_mean = float(first.mean()), float(second.mean())
    if not (math.isfinite(first_mean) and math.isfinite(second_mean)):
        gain, noise = (math.inf if math.isfinite(second_mean) else 0.0), 0.0
        change = gain
    else:
        change = (first_mean - second_mean) / max(abs(first_mean), 1e-300)
        gain = max(0.0, change)
        diff = first - second
        se = float(diff.std(ddof=1) / math.sqrt(k)) if k > 1 else math.inf
        noise = 2 * se / max(abs(first_mean), 1e-300)
    tolerance = values_verdict.tolerance
    moved = f"gained {gain:.1%} on" if change >= 0 else f"was {-change:.1%} worse than"
    measured = (
        f"re-run on {k} fresh seeds, the second half's best (trial {confirmation.second_trial}) "
        f"{moved} the first half's (trial {confirmation.first_trial})"
    )
    if gain < tolerance:
        below = f" (< {tolerance:.0%})" if change >= 0 else ""
        saturated, verdict = True, f"saturated: {measured}{below}"
    elif gain <= noise:
        saturated = True
        verdict = f"saturated: {measured}, within twice its standard error ({noise:.1%})"
    else:
        saturated = False
        verdict = (
            f"not saturated: {measured} (>= {tolerance:.0%}, beyond twice its standard error "
            f"{noise:.1%})"
        )
    return replace(
        values_verdict,
        saturated=saturated,
        gain=gain,
        first_half_best=first_mean,
        second_half_best=second_mean,
        verdict=verdict,
    )


def stored_confirmation(study: optuna.Study, trials: Sequence[FrozenTrial]) -> Confirmation | None:
    """The study's stored confirmation if it was made for exactly these counted trials (the
    same count and the same two best trials), else ``None``."""
    data = study.user_attrs.get(ATTR_CONFIRMATION)
    if not data:
        return None
    confirmation = Confirmation.from_dict(data)
    first, second = halves_best(trials)
    if (
        confirmation.trials != len(trials)
        or first is None
        or second is None
        or (confirmation.first_trial, confirmation.second_trial) != (first.number, second.number)
    ):
        return None
    return confirmation


def chosen_trial(study: optuna.Study, trials: int) -> FrozenTrial | None:
    """The trial whose configuration is the study's result (what ``lopt bench tuned=true`` and
    the suites run), among its first ``trials`` counted ones: the completed, non-diverged one
    with the lowest value, unless the study holds a :class:`Confirmation` of exactly these
    trials; then, of the two re-run trials, the one with the lower mean over the fresh seeds
    (a diverged re-run counts with its penalty; the lower value on a tie). ``None`` if no trial
    has a value."""
    from harness.tuning.study import best_trial, counted_trials

    best = best_trial(study, trials)
    confirmation = stored_confirmation(study, counted_trials(study, trials))
    if best is None or confirmation is None:
        return best
    mine = confirmation.mean_of(best.number)
    if mine is None:
        return best
    first, second = confirmation.first_trial, confirmation.second_trial
    other = second if best.number == first else first
    theirs = confirmation.mean_of(other)
    if theirs is None or not math.isfinite(theirs) or not theirs < mine:
        return best
    return next(t for t in study.get_trials(deepcopy=False) if t.number == other)


def fresh_seed_mean(study: optuna.Study, trials: int, number: int) -> float | None:
    """Trial ``number``'s mean over the fresh seeds of the study's confirmation of its first
    ``trials`` counted trials, or ``None`` where it was not re-run."""
    from harness.tuning.study import counted_trials

    confirmation = stored_confirmation(study, counted_trials(study, trials))
    return None if confirmation is None else confirmation.mean_of(number)


def study_saturation(
    study: optuna.Study, trials: int | None = None, rule: SaturationRule = DEFAULT_RULE
) -> Saturation:
    """The verdict on ``study``'s result: its first ``trials`` counted trials (default: the
    study's own trial count, or every counted trial while it is still running); when the values
    fail the rule and the study holds a :class:`Confirmation` of exactly these trials, the
    confirmed verdict."""
    from harness.tuning.study import stored_protocol

    objective = stored_protocol(study)["objective"]
    if trials is None:
        target = int(study.user_attrs.get(ATTR_TRIALS, 0))
        trials = min(target, len(count_trials(study).counted)) if target else None
    chosen = counted_trials(study, trials if trials is not None else 10**9)
    verdict = saturation_verdict(trial_values(chosen), objective, rule)
    if verdict.saturated or len(chosen) < rule.min_trials:
        return verdict
    confirmation = stored_confirmation(study, chosen)
    return verdict if confirmation is None else confirmed_verdict(verdict, confirmation)


def saturation_of(storage: str, study: str, rule: SaturationRule = DEFAULT_RULE) -> Saturation:
    """The saturation verdict of the study named ``study`` in ``storage`` (a storage URL, as in
    ``tuning.storage``). ``UsageError`` if there is no such study."""
    opened = open_storage(storage, create=False)
    names = set(optuna.get_all_study_names(opened.storage))
    if study not in names:
        raise UsageError(f"no tuning study {study!r} in {storage}")
    return study_saturation(optuna.load_study(study_name=study, storage=opened.storage), rule=rule)


def _best(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if len(finite) else math.nan
