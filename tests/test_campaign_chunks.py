"""Campaigns in chunks: the time budget, resumable confirmations, final-only evaluations of new
studies, and the status lines (issue 25: the LM campaign finished over many short sessions)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from harness import run
from harness.registry import create_task
from harness.results.schema import canonical_json
from harness.settings.tune import TuneSettings
from harness.tuning import tuner as tuner_module
from harness.tuning.campaign import (
    EXIT_UNFINISHED,
    Campaign,
    StudySpec,
    TimeBudget,
    campaign_status,
    main,
    run_campaign,
)
from harness.tuning.saturation import ATTR_CONFIRMATION
from harness.tuning.storage import open_storage
from harness.tuning.study import (
    ATTR_DEFAULTS_QUEUED,
    ATTR_FINISHER,
    ATTR_TRIALS,
    ATTR_UNTIL,
    load_existing,
    load_or_create,
    stored_protocol,
    study_name,
)
from harness.tuning.tuner import (
    ATTR_CONFIRMING,
    TuningStopped,
    make_pruner,
    make_sampler,
    prepare,
    tune,
)


def quiet(_message: str) -> None:
    pass


class Clock:
    """A clock that advances ``tick`` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        value = self.now
        self.now += self.tick
        return value


def test_the_time_budget_stops_before_a_trial_that_would_end_past_it() -> None:
    budget = TimeBudget(35.0, clock=Clock(10.0))  # made at t=0; asked at t=10, 20, 30
    # t=10: no trial seen yet; t=20: 20 + 10 <= 35; t=30: 30 + 10 > 35.
    assert [budget(), budget(), budget()] == [False, False, True]
    assert budget.longest == 10.0 and budget.used
    budget = TimeBudget(100.0, clock=Clock(10.0))
    budget()
    budget.new_study()  # the interval across two studies is not a trial
    budget()
    assert budget.longest == 0.0
    with pytest.raises(Exception, match="--max-seconds must be > 0"):
        TimeBudget(0.0)


def test_a_campaign_chunk_stops_between_trials_and_the_next_continues(tmp_path) -> None:
    spec = StudySpec("quadratic", "sgd", "train_loss", 60, search={"lr": [0.01, 1.0]})
    campaign = Campaign(
        specs=[spec], tag="", storage=f"sqlite:///{tmp_path}/o.db", out=str(tmp_path), caps=(32,)
    )
    assert campaign_status(campaign) == [f"{campaign.study_name(spec)}: not started"]
    budget = TimeBudget(35.0, clock=Clock(10.0))
    with pytest.raises(TuningStopped):
        run_campaign(campaign, log=quiet, budget=budget)
    study = campaign.existing(spec)
    assert len([t for t in study.trials if t.state.is_finished()]) == 2  # two trials fitted
    # New studies of an unpruned campaign evaluate at the end of the budget only.
    assert stored_protocol(study)["eval_every"] == 60
    line = campaign_status(campaign)[0]
    assert line.startswith(f"{campaign.study_name(spec)}: 2 trials")
    best = min(t.value for t in study.trials if t.state.is_finished())
    assert re.search(rf"; best {best:.5g} at lr=[0-9.e-]+; mean trial \d+ s$", line)
    outcome = run_campaign(campaign, log=quiet)[0]
    assert outcome.ran == outcome.counted - 2 and outcome.counted >= 32


def test_an_existing_study_keeps_its_evaluation_interval(tmp_path) -> None:
    spec = StudySpec("quadratic", "adam", "train_loss", 60)
    storage = f"sqlite:///{tmp_path}/o.db"
    tune(
        TuneSettings(
            task="quadratic",
            optimizer="adam",
            trials=2,
            objective="train_loss",
            budget_steps=60,
            eval_seeds=0,
            eval_every=6,
            pruner="none",
            storage=storage,
            out=str(tmp_path),
        ),
        log=quiet,
    )
    campaign = Campaign(specs=[spec], tag="", storage=storage, out=str(tmp_path))
    assert campaign.eval_every_of(spec) == 6
    assert campaign.eval_every_of(StudySpec("quadratic", "sgd", "train_loss", 60)) == 60
    assert (
        Campaign(specs=[], tag="", storage=storage, out="", pruner="median").eval_every_of(
            StudySpec("quadratic", "sgd", "train_loss", 60)
        )
        is None
    )  # the tuner's default: a pruner needs values along the run


def test_fewer_evaluations_leave_the_final_loss_unchanged() -> None:
    """Why a campaign may evaluate only at the end: an evaluation draws no random number, so
    the final whole-split losses (the objective) are the same bits."""
    task = create_task("digits_mlp")
    finals = [
        run(task, "adam", {"lr": 3e-3}, steps=40, seed=1, eval_every=every, log_every=40)
        for every in (5, 40)
    ]
    assert len(finals[0].measurements) > len(finals[1].measurements)
    for split in ("train", "valid"):
        assert finals[0].final(split) == finals[1].final(split)


def failing_study(tmp: Path) -> TuneSettings:
    """32 stored trials of SGD on the quadratic whose halves' bests (lr 0.3 both, the second
    half's a lucky 0.5 against 1.0) fail the rule on their values, so finishing re-runs them."""
    asked = TuneSettings(
        task="quadratic",
        optimizer="sgd",
        trials=32,
        until="saturated",
        objective="train_loss",
        budget_steps=60,
        eval_seeds=0,
        search={"lr": [0.001, 1.9]},
        confirm_seeds=3,
        storage=f"sqlite:///{tmp}/optuna.db",
        out=str(tmp / "out"),
    )
    protocol, space, base = prepare(asked)
    name = study_name("quadratic", "sgd", "train_loss", 60, "tpe")
    storage = open_storage(asked.storage).storage
    study = load_or_create(
        storage, name, protocol, make_sampler(protocol, space), make_pruner(protocol)
    )
    for attr, value in ((ATTR_TRIALS, 32), (ATTR_UNTIL, "saturated")):
        study.set_user_attr(attr, value)
    study.set_user_attr(ATTR_DEFAULTS_QUEUED, True)
    distributions = {n: dim.distribution() for n, dim in space.items()}
    for number in range(32):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.3},
                distributions=distributions,
                value=0.5 if number == 20 else 1.0,
                user_attrs={"hparams": canonical_json({**base, "lr": 0.3})},
            )
        )
    return asked


@pytest.mark.slow
def test_a_stopped_confirmation_resumes_with_the_runs_it_lacks(tmp_path, monkeypatch) -> None:
    whole = failing_study(tmp_path / "whole")
    expected = tune(whole, log=quiet).saturation
    name = study_name("quadratic", "sgd", "train_loss", 60, "tpe")
    stored = load_existing(open_storage(whole.storage).storage, name)
    reference = stored.user_attrs[ATTR_CONFIRMATION]

    chunked = failing_study(tmp_path / "chunked")
    asked = iter([False, False, False, True])  # between trials, two re-runs, then stop
    with pytest.raises(TuningStopped, match="during the confirmation"):
        tune(chunked, log=quiet, stop=lambda: next(asked))
    study = load_existing(open_storage(chunked.storage).storage, name)
    assert len(study.user_attrs[ATTR_CONFIRMING]["first_values"]) == 2
    assert study.user_attrs[ATTR_FINISHER] == {}  # the next run may finish it
    assert ATTR_CONFIRMATION not in study.user_attrs

    calls = []
    real = tuner_module.evaluate_configuration

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tuner_module, "evaluate_configuration", counting)
    resumed = tune(chunked, log=quiet)
    assert len(calls) == 2 * 3 - 2  # only the re-runs it lacked
    study = load_existing(open_storage(chunked.storage).storage, name)
    assert study.user_attrs[ATTR_CONFIRMATION] == reference
    assert study.user_attrs[ATTR_CONFIRMING] == {}
    assert resumed.saturation == expected


def test_the_command_refuses_a_bad_budget_in_one_line(capsys) -> None:
    assert main(["--suite", "lm", "--max-seconds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["campaign: error: --max-seconds must be > 0, got 0.0"]
    assert EXIT_UNFINISHED == 75
