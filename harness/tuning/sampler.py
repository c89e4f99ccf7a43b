"""The samplers of a study, seeded per trial so that no start replays another's proposals.

Optuna does not store a sampler's random state, and a sampler built with the same seed at every
start draws the same random numbers again: a resumed or extended study (or a second worker of
the same study) proposed exactly the configurations of its first trials once more. Here the
random state of trial ``n`` is derived from the study's ``sampler_seed`` and ``n`` alone
(:func:`trial_seed`), fresh for every trial, so:

* a resumed or extended study proposes what the uninterrupted one would have, given the same
  finished trials (the proposals depend on the seed, the trial number and the history);
* workers sharing a study never share a trial number, so they never share a random stream; TPE
  also treats the trials in flight as bad (``constant_liar``), so concurrent workers spread out
  instead of all sampling near the same best trial (this changes nothing for one worker).

The grid and QMC samplers keep one seed, which fixes their design: the grid's points are
shuffled by it and trial ``n`` takes the ``n``-th (then any point not visited yet), and the QMC
sequence is one scrambled sequence whose position the study stores; neither replays a point.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from harness.tuning.space import SearchSpace

#: the stream of :func:`trial_seed` (keeps sampler seeds apart from other derived seeds)
SAMPLER_STREAM = 7


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number`` of a study seeded with ``seed`` (32 bits)."""
    words = np.random.SeedSequence([seed, SAMPLER_STREAM, number]).generate_state(1)
    return int(words[0])


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """Delegates to a sampler rebuilt, before each trial, with :func:`trial_seed`."""

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._inner = build(trial_seed(seed, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


class AskTellGridSampler(optuna.samplers.GridSampler):
    """A grid sampler for the ask-and-tell loop: the loop stops at ``trials`` (at most the grid's
    size), so the sampler must not call ``study.stop()`` (allowed only inside ``optimize``)."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        return None


def make_sampler(
    sampler: str, seed: int, space: SearchSpace, grid_points: int
) -> optuna.samplers.BaseSampler:
    """The study's sampler (``sampler``: tpe, random, grid or qmc; see the module docstring)."""
    if sampler == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3; stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="halton", scramble=True, seed=seed, warn_asynchronous_seeding=False
            )
    if sampler == "tpe":
        multivariate = len(space) > 1

        def build(s: int) -> optuna.samplers.BaseSampler:
            with warnings.catch_warnings():  # constant_liar: "experimental" since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(
                    seed=s, multivariate=multivariate, constant_liar=True
                )

    elif sampler == "random":

        def build(s: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.RandomSampler(seed=s)

    else:
        grid = {name: dim.grid(grid_points) for name, dim in space.items()}
        return AskTellGridSampler(grid, seed=seed)
    return PerTrialSeedSampler(build, seed)
