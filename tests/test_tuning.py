"""Optuna tuning: search spaces, studies, trials, divergence, saturation, re-evaluation,
resumption, parallel workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.plan import RunPlan
from harness.registry import OPTIMIZERS
from harness.results.io import read_results
from harness.results.schema import canonical_json
from harness.suite import check_fair_tuning
from harness.tuning import objective as objective_module
from harness.tuning.campaign import (
    Campaign,
    StudySpec,
    parse_seeds,
    run_campaign,
    suite_studies,
    with_extra,
)
from harness.tuning.export import saturation_markdown, saturation_table
from harness.tuning.saturation import (
    CONFIRM_SEED_OFFSET,
    Confirmation,
    SaturationRule,
    best_so_far,
    confirmed_verdict,
    saturation_of,
    saturation_verdict,
)
from harness.tuning.space import search_space
from harness.tuning.storage import open_storage
from harness.tuning.study import (
    ATTR_DEFAULTS_QUEUED,
    ATTR_TRIALS,
    ATTR_UNTIL,
    count_trials,
    is_diverged,
    load_existing,
    load_or_create,
    recover_interrupted,
    study_name,
)
from harness.tuning.tuner import (
    EVAL_SEED_OFFSET,
    TuneSettings,
    TuningStopped,
    make_pruner,
    make_sampler,
    prepare,
    tune,
    tuned_configuration,
)


def specs(name: str):
    return OPTIMIZERS.get(name).factory.hparam_specs


def quiet(_message: str) -> None:
    pass


def settings(tmp_path: Path, **changes) -> TuneSettings:
    base = {
        "task": "quadratic",
        "optimizer": "sgd",
        "trials": 6,
        "budget_steps": 60,
        "eval_seeds": 0,
        "storage": f"sqlite:///{tmp_path}/optuna.db",
        "out": str(tmp_path / "out"),
    }
    return TuneSettings(**{**base, **changes})


# -- search spaces ---------------------------------------------------------------------------------
def test_default_spaces_search_the_declared_ranges() -> None:
    for name in ("sgd", "momentum", "adam", "adamw", "rmsprop"):
        lr = search_space(name, specs(name))["lr"]
        high = 10.0 if name == "sgd" else 1.0
        assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, high, True)
    # As in the paper, only learning rates are searched unless a study adds more.
    assert set(search_space("momentum", specs("momentum"))) == {"lr"}


def test_space_overrides_fix_add_narrow_and_remove() -> None:
    space = search_space(
        "adam", specs("adam"), {"lr": [1e-4, 1e-1], "beta1": True}, fixed={"eps": 1e-6}
    )
    assert (space["lr"].low, space["lr"].high) == (1e-4, 1e-1)
    assert (space["beta1"].low, space["beta1"].high) == (0.5, 0.999)
    space = search_space("momentum", specs("momentum"), {"lr": False, "nesterov": True})
    assert set(space) == {"nesterov"} and space["nesterov"].grid(13) == [False, True]


def test_the_grid_is_log_spaced_like_deepobs() -> None:
    grid = search_space("adam", specs("adam"))["lr"].grid(13)
    assert len(grid) == 13
    assert np.allclose(np.log10(grid), np.linspace(-5, 0, 13), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "overrides", "fixed", "message"),
    [
        ("sgd", {"foo": [1, 2]}, {}, "takes no hyperparameter 'foo'"),
        ("sgd", {"lr": ["a", "b"]}, {}, "must be [LOW,HIGH]"),
        ("sgd", {"lr": [1e-3]}, {}, "must be [LOW,HIGH]"),
        ("sgd", {"lr": [0.0, 1.0]}, {}, "lr must be > 0"),
        ("sgd", {"lr": [1.0, 0.1]}, {}, "LOW must be below HIGH"),
        ("momentum", {"nesterov": [0, 1]}, {}, "is a bool"),
        ("momentum", {"momentum": [0.5, 1.5]}, {}, "momentum must be >= 0 and < 1"),
        ("sgd", {"lr": [0.01, 0.1]}, {"lr": 0.1}, "both fixed"),
        ("sgd", {}, {"lr": 0.1}, "nothing to tune"),
    ],
)
def test_bad_search_spaces_are_usage_errors(name, overrides, fixed, message) -> None:
    with pytest.raises(UsageError) as raised:
        search_space(name, specs(name), overrides, fixed)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# -- studies ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_study_runs_exactly_its_trials_and_queues_the_defaults_first(tmp_path) -> None:
    outcome = tune(settings(tmp_path), log=quiet)
    study = load_existing(open_storage(f"sqlite:///{tmp_path}/optuna.db").storage, outcome.study)
    trials = study.get_trials()
    assert outcome.study == "quadratic-sgd-valid_loss-60steps-tpe-p2"
    assert len(trials) == 6 and outcome.ran == 6 and outcome.counted == 6
    assert trials[0].params == {"lr": 0.1} and trials[0].user_attrs["defaults"] is True
    assert all(json.loads(t.user_attrs["hparams"])["weight_decay"] == 0.0 for t in trials)
    again = tune(settings(tmp_path), log=quiet)  # rerunning a complete study runs nothing
    assert again.ran == 0 and again.best_number == outcome.best_number
    more = tune(settings(tmp_path, trials=8), log=quiet)  # asking for more adds only those
    assert more.ran == 2 and len(study.get_trials()) == 8


@pytest.mark.slow
def test_diverged_trials_complete_with_a_penalty_and_keep_their_reason(tmp_path) -> None:
    # Gradient descent on the quadratic (lambda_max = 1) diverges for lr > 2.
    outcome = tune(
        settings(tmp_path, search={"lr": [0.5, 4.0]}, trials=8, pruner="none"), log=quiet
    )
    study = load_existing(open_storage(f"sqlite:///{tmp_path}/optuna.db").storage, outcome.study)
    trials = study.get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    diverged = [t for t in trials if is_diverged(t)]
    converged = [t for t in trials if not is_diverged(t)]
    assert diverged and converged and outcome.counted == 8
    assert all(t.params["lr"] > 2.0 for t in diverged)
    assert all(t.user_attrs["fail_reason"].startswith("diverged at step") for t in diverged)
    # The penalty is no better than the untrained model, so worse than every converged trial.
    assert min(t.value for t in diverged) > max(t.value for t in converged)
    assert outcome.best_hparams["lr"] < 2.0
    frame = pd.read_csv(Path(tmp_path, "out", outcome.study, "trials.csv"))
    marked = frame[frame.state == "diverged"]
    assert len(marked) == len(diverged) and marked.fail_reason.str.startswith("diverged").all()


def _late_trials_deep_in_the_divergent_region(tmp_path: Path, name: str) -> float:
    """The fraction of trials 20-39 of a 40-trial TPE study of SGD's lr in [0.1, 100] on the
    quadratic that sample lr >= 10 (every run there diverges: lr > 2 does)."""
    outcome = tune(
        settings(tmp_path / name, search={"lr": [0.1, 100.0]}, trials=40, pruner="none"),
        log=quiet,
    )
    study = load_existing(
        open_storage(f"sqlite:///{tmp_path / name}/optuna.db").storage, outcome.study
    )
    late = sorted(study.get_trials(), key=lambda t: t.number)[20:]
    assert all(is_diverged(t) for t in late if t.params["lr"] >= 10.0)
    return sum(t.params["lr"] >= 10.0 for t in late) / len(late)


@pytest.mark.slow
def test_tpe_stops_sampling_where_every_run_diverges(tmp_path, monkeypatch) -> None:
    # The prior puts a third of the samples at lr >= 10; told the penalty, TPE leaves the region.
    learned = _late_trials_deep_in_the_divergent_region(tmp_path, "penalty")
    assert learned <= 0.15
    # Control: diverged trials failed (no value, as in protocol version 1): TPE keeps going there.
    monkeypatch.setattr(objective_module, "divergence_penalty", lambda seen: math.inf)
    blind = _late_trials_deep_in_the_divergent_region(tmp_path, "failed")
    assert blind >= 0.4 and blind > learned + 0.25


# -- saturation ------------------------------------------------------------------------------------
def test_the_saturation_verdict_follows_the_rule() -> None:
    flat = [1.0] * 16 + [0.995] * 16  # the second half gains 0.5%
    verdict = saturation_verdict(flat, "valid_loss")
    assert verdict.saturated and verdict.trials == 32
    assert verdict.gain == pytest.approx(0.005) and verdict.verdict.startswith("saturated")
    assert not saturation_verdict(flat[:31], "valid_loss").saturated  # fewer than 32 trials
    assert "31 of at least 32" in saturation_verdict(flat[:31], "valid_loss").verdict
    gaining = [1.0] * 16 + [0.95] * 16  # 5%: too much for valid loss, fine for train loss
    assert not saturation_verdict(gaining, "valid_loss").saturated
    assert saturation_verdict(gaining, "train_loss").saturated
    unfinished = saturation_verdict([1.0] * 16 + [math.nan] * 16, "valid_loss")
    assert unfinished.saturated and "none of its trials completed" in unfinished.verdict
    worse = [1.0] * 16 + [2.0] * 16
    assert saturation_verdict(worse, "valid_loss").gain == 0.0
    late = [math.nan] * 16 + [1.0] * 16  # nothing in the first half: the second gains everything
    assert saturation_verdict(late, "valid_loss").gain == math.inf
    assert not saturation_verdict(late, "valid_loss").saturated
    assert not saturation_verdict([math.nan] * 40, "train_loss").saturated
    assert saturation_verdict(flat[:8], "valid_loss", SaturationRule(min_trials=8)).saturated
    with pytest.raises(UsageError, match="unknown objective"):
        saturation_verdict(flat, "test_loss")
    running = best_so_far([math.nan, 3.0, 4.0, 1.0, math.nan])
    assert np.isnan(running[0]) and list(running[1:]) == [3.0, 3.0, 1.0, 1.0]


def test_the_confirmed_verdict_asks_for_a_measurable_gain() -> None:
    failing = saturation_verdict([1.0] * 16 + [0.5] + [1.0] * 15, "train_loss")
    assert not failing.saturated and failing.gain == pytest.approx(0.5)

    def confirm(first: list[float], second: list[float]):
        seeds = [CONFIRM_SEED_OFFSET + k for k in range(len(first))]
        return confirmed_verdict(failing, Confirmation(32, 3, 20, seeds, first, second))

    same = confirm([1.0, 1.2, 0.9, 1.1], [1.0, 1.2, 0.9, 1.1])  # a lucky draw of one config
    assert same.saturated and same.gain == 0.0 and "trial 20" in same.verdict
    worse = confirm([1.0, 1.2, 0.9, 1.1], [1.1, 1.32, 0.99, 1.21])  # the second is 10% worse
    assert (
        worse.saturated
        and worse.gain == 0.0
        and worse.verdict.endswith("was 10.0% worse than the first half's (trial 3)")
    )
    small = confirm([1.0, 1.2, 0.9, 1.1], [0.95, 1.14, 0.86, 1.04])  # 5% < 10%
    assert small.saturated and "(< 10%)" in small.verdict
    noisy = confirm([1.0, 2.0, 0.5, 1.5], [0.4, 2.2, 0.2, 1.2])  # 20%, but the noise is larger
    assert noisy.saturated and "within twice its standard error" in noisy.verdict
    real = confirm([1.0, 1.2, 0.9, 1.1], [0.5, 0.62, 0.44, 0.56])  # 50%, on every seed
    assert not real.saturated and real.gain == pytest.approx(0.4952, abs=1e-3)
    assert real.first_half_best == pytest.approx(1.05) and real.trials == 32


@pytest.mark.slow
def test_a_lucky_best_is_rerun_and_a_real_one_is_kept(tmp_path) -> None:
    """At the cap, the values alone fail the rule; re-running the halves' bests on fresh seeds
    decides: the same configuration drawn luckily is no gain, a better one is."""

    def study_with(tmp: Path, first_lr: float, second_lr: float) -> TuneSettings:
        asked = settings(
            tmp,
            trials=32,
            until="saturated",
            objective="train_loss",
            search={"lr": [0.001, 1.9]},
            confirm_seeds=3,
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
            lr, value = (second_lr, 0.5) if number == 20 else (first_lr, 1.0)
            study.add_trial(
                optuna.trial.create_trial(
                    params={"lr": lr},
                    distributions=distributions,
                    value=value,
                    user_attrs={"hparams": canonical_json({**base, "lr": lr})},
                )
            )
        return asked

    lucky = study_with(tmp_path / "lucky", 0.3, 0.3)
    outcome = tune(lucky, log=quiet)
    assert outcome.ran == 0 and outcome.counted == 32
    assert outcome.saturation.saturated and "re-run on 3 fresh seeds" in outcome.saturation.verdict
    assert saturation_of(lucky.storage, outcome.study) == outcome.saturation  # stored
    assert tune(lucky, log=quiet).saturation == outcome.saturation  # not re-run again
    row = saturation_table([load_existing(open_storage(lucky.storage).storage, outcome.study)])
    assert row.saturated.item() and row.second_half_gain.item() == pytest.approx(0.5)
    assert row.verdict.item() == outcome.saturation.verdict
    real = study_with(tmp_path / "real", 0.003, 0.3)
    outcome = tune(real, log=quiet)
    assert not outcome.saturation.saturated and outcome.saturation.gain > 0.5
    assert "trial 20" in outcome.saturation.verdict
    assert outcome.best_number == 20  # the better value and the better re-runs agree
    # The best value is a lucky draw of a worse rate: the re-runs choose the first half's best.
    misled = study_with(tmp_path / "misled", 0.3, 0.003)
    outcome = tune(misled, log=quiet)
    assert (
        outcome.saturation.saturated and "worse than the first half's" in outcome.saturation.verdict
    )
    assert outcome.best_number == 0 and outcome.best_hparams["lr"] == 0.3
    hparams, tags = tuned_configuration(
        task="quadratic",
        optimizer="sgd",
        objective="train_loss",
        budget_steps=60,
        storage=misled.storage,
    )
    assert hparams["lr"] == 0.3 and tags["trial"] == 0 and tags["selected_by"] == "fresh seeds"
    assert tags["objective_value"] == 1.0 and tags["fresh_seed_mean"] < 0.5
    table = saturation_table([load_existing(open_storage(misled.storage).storage, outcome.study)])
    assert table.chosen_trial.item() == 0 and table.chosen_value.item() == 1.0
    assert "0: fresh-seed mean" in saturation_markdown(table)
    with pytest.raises(UsageError, match="confirm_seeds must be 0"):
        tune(settings(tmp_path, confirm_seeds=1), log=quiet)


@pytest.mark.slow
def test_until_saturated_stops_when_the_rule_holds(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    asked = settings(
        tmp_path,
        trials=80,
        until="saturated",
        objective="train_loss",
        search={"lr": [0.01, 1.9]},
    )
    outcome = tune(asked, log=quiet)
    assert outcome.saturation.saturated and 32 <= outcome.counted < 80
    assert outcome.ran == outcome.counted == outcome.saturation.trials
    study = load_existing(open_storage(storage).storage, outcome.study)
    assert study.user_attrs[ATTR_TRIALS] == outcome.counted
    assert saturation_of(storage, outcome.study) == outcome.saturation
    assert tune(asked, log=quiet).ran == 0  # saturated: a rerun has nothing to do
    _, tags = tuned_configuration(
        task="quadratic", optimizer="sgd", objective="train_loss", budget_steps=60, storage=storage
    )
    assert tags["trials"] == outcome.counted
    assert Path(tmp_path, "out", outcome.study, "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
    # A study still short of its cap names the command that finishes it.
    study.set_user_attr(ATTR_TRIALS, 80)
    with pytest.raises(UsageError, match="until=saturated trials=80"):
        tuned_configuration(
            task="quadratic",
            optimizer="sgd",
            objective="train_loss",
            budget_steps=60,
            storage=storage,
        )


def test_a_campaign_takes_the_suite_studies_and_adds_baselines() -> None:
    specs, common = suite_studies("paper")
    assert len(specs) == 28 and common["storage"] == "sqlite:///results/paper/optuna.db"
    assert common["tag"] == "paper" and common["trials"] == 128
    cosine = [s for s in specs if s.optimizer in ("adam_cosine", "adamw_cosine")]
    assert all(s.fixed == {"decay_steps": 2000} and s.budget_steps == 2000 for s in cosine)
    assert {s.task_cfg.get("train_size") for s in specs if s.task == "fmnist_cnn16"} == {10000}
    # Two tuning seeds for both objectives: the train-loss studies under their own tag.
    assert {(s.objective, s.tag, s.seeds) for s in specs} == {
        ("train_loss", "paper-s2", 2),
        ("valid_loss", "paper", None),  # the suite's tag; the objective's default: 2 seeds
    }
    assert with_extra(specs, ["adamw_cosine", "nesterov"]) == specs  # already in the suite
    older = [s for s in specs if s.optimizer not in ("adamw_cosine", "nesterov")]
    added = with_extra(older, ["adamw_cosine", "nesterov"])[len(older) :]
    assert len(added) == 8 and {s.optimizer for s in added} == {"adamw_cosine", "nesterov"}
    assert all(s in specs for s in added)  # the clones are the suite's own entries


def test_a_campaign_takes_tuning_seeds_per_objective() -> None:
    assert parse_seeds("") == {} and parse_seeds("train_loss=2") == {"train_loss": 2}
    for bad in ("train_loss=0", "test_loss=2", "train_loss"):
        with pytest.raises(UsageError, match="--seeds: bad item"):
            parse_seeds(bad)


def test_a_study_takes_its_tag_and_tuning_seeds_from_the_suite_unless_overridden() -> None:
    tuning = {"objective": "train_loss", "tag": "s2", "seeds": 2}
    spec = StudySpec.of_run("quadratic", "sgd", 60, {}, tuning)
    other = StudySpec.of_run("quadratic", "adam", 60, {}, {"objective": "train_loss"})
    assert (spec.tag, spec.seeds, other.tag, other.seeds) == ("s2", 2, "", None)
    own = Campaign(specs=[spec, other], tag=None, storage="sqlite:///x.db", out="x")
    settings = [own.settings(s, 1, "saturated") for s in own.specs]
    assert [(s.tag, s.seeds) for s in settings] == [("s2", 2), ("", 1)]  # 1: train_loss's default
    forced = replace(own, tag="new")
    assert {forced.settings(s, 1, "saturated").tag for s in forced.specs} == {"new"}
    with pytest.raises(UsageError, match=r"tuning\.seeds=0; allowed: an integer >= 1"):
        StudySpec.of_run("quadratic", "sgd", 60, {}, {**tuning, "seeds": 0})


@pytest.mark.slow
def test_a_campaign_ends_with_every_study_saturated_or_at_the_last_cap(tmp_path) -> None:
    specs = [
        StudySpec("quadratic", name, "train_loss", 60, search={"lr": [0.01, 1.0]})
        for name in ("sgd", "adam")
    ]
    campaign = Campaign(
        specs=specs, tag="", storage=f"sqlite:///{tmp_path}/o.db", out=str(tmp_path), caps=(32, 48)
    )
    outcomes = run_campaign(campaign, log=quiet)
    assert all(o.saturation.saturated or o.counted == 48 for o in outcomes)
    # The same rule and cap for both: check_fair_tuning accepts them, whatever the counts.
    plans = [
        RunPlan(
            task="quadratic",
            optimizer=spec.optimizer,
            seed=0,
            tags={
                "study": o.study,
                "trials": o.counted,
                "tuning_budget_steps": 60,
                "saturated": o.saturation.saturated,
            },
        )
        for spec, o in zip(specs, outcomes, strict=True)
    ]
    check_fair_tuning("campaign", plans)
    # Rerunning a finished campaign runs no trial.
    assert all(o.ran == 0 for o in run_campaign(campaign, log=quiet))


@pytest.mark.slow
def test_a_stop_request_ends_tuning_between_trials(tmp_path) -> None:
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 3

    with pytest.raises(TuningStopped, match="stopped between trials, after 3"):
        tune(settings(tmp_path), log=quiet, stop=stop)
    study = load_existing(
        open_storage(f"sqlite:///{tmp_path}/optuna.db").storage,
        "quadratic-sgd-valid_loss-60steps-tpe-p2",
    )
    counts = count_trials(study)
    assert len(counts.counted) == 3 and not counts.in_flight
    assert tune(settings(tmp_path), log=quiet).ran == 3  # a rerun finishes the study


def test_until_saturated_needs_a_cap_of_at_least_the_minimum(tmp_path) -> None:
    with pytest.raises(UsageError, match="trials is the cap and must be >= 32"):
        tune(settings(tmp_path, until="saturated", trials=20), log=quiet)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "qmc", "grid"])
def test_every_sampler_runs(tmp_path, sampler) -> None:
    outcome = tune(settings(tmp_path, sampler=sampler, grid_points=6, trials=6), log=quiet)
    assert outcome.counted == 6 and outcome.best_value is not None
    if sampler == "grid":
        study = load_existing(
            open_storage(f"sqlite:///{tmp_path}/optuna.db").storage, outcome.study
        )
        lrs = sorted(t.params["lr"] for t in study.get_trials())
        assert np.allclose(np.log10(lrs), np.linspace(-5, 1, 6), atol=1e-5)  # sgd: [1e-5, 10]


def test_a_grid_smaller_than_the_trials_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="the grid has 4 points"):
        tune(settings(tmp_path, sampler="grid", grid_points=4, trials=5), log=quiet)


@pytest.mark.slow
def test_a_pruner_stops_hopeless_trials(tmp_path) -> None:
    outcome = tune(settings(tmp_path, trials=14, budget_steps=100), log=quiet)
    study = load_existing(open_storage(f"sqlite:///{tmp_path}/optuna.db").storage, outcome.study)
    states = {t.state for t in study.get_trials()}
    assert optuna.trial.TrialState.PRUNED in states and outcome.counted == 14


@pytest.mark.slow
def test_reopening_a_study_with_another_protocol_is_refused(tmp_path) -> None:
    tune(settings(tmp_path, trials=2), log=quiet)
    with pytest.raises(UsageError, match=r"already exists with another protocol.*seeds"):
        tune(settings(tmp_path, trials=2, seeds=2), log=quiet)


@pytest.mark.slow
def test_the_best_is_retrained_with_fresh_seeds_and_tagged(tmp_path) -> None:
    outcome = tune(settings(tmp_path, eval_seeds=3), log=quiet)
    rows = read_results(outcome.best_runs)
    assert sorted(rows.seed.unique()) == [EVAL_SEED_OFFSET + k for k in range(3)]
    assert {"train", "valid", "test"} <= set(rows.split)
    (tags,) = set(rows.tags)
    tags = json.loads(tags)
    assert tags["study"] == outcome.study and tags["trial"] == outcome.best_number
    assert tags["trials"] == 6 and tags["tuning_budget_steps"] == 60
    trials = pd.read_csv(Path(tmp_path, "out", outcome.study, "trials.csv"))
    assert len(trials) == 6 and trials.counted.all() and "param_lr" in trials
    assert Path(tmp_path, "out", outcome.study, "objective_vs_lr.png").read_bytes()[:4] == (
        b"\x89PNG"
    )


@pytest.mark.slow
def test_tuned_lookup_names_the_command_that_creates_a_missing_study(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(UsageError) as raised:
        tuned_configuration(
            task="quadratic",
            optimizer="adam",
            objective="valid_loss",
            budget_steps=60,
            storage=storage,
        )
    message = str(raised.value)
    assert "lopt tune task=quadratic optimizer=adam objective=valid_loss budget_steps=60" in message
    outcome = tune(settings(tmp_path), log=quiet)
    hparams, tags = tuned_configuration(
        task="quadratic", optimizer="sgd", objective="valid_loss", budget_steps=60, storage=storage
    )
    assert hparams == outcome.best_hparams and tags["study"] == outcome.study
    with pytest.raises(
        UsageError, match=r"tuned with task.noise=0.0, but the run has task.noise=1"
    ):
        tuned_configuration(
            task="quadratic",
            optimizer="sgd",
            objective="valid_loss",
            budget_steps=60,
            storage=storage,
            task_cfg={"noise": 1.0},
        )


@pytest.mark.slow
def test_tuned_lookup_uses_a_study_of_an_earlier_protocol_when_no_newer_one_exists(
    tmp_path,
) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    outcome = tune(settings(tmp_path), log=quiet)
    old = study_name("quadratic", "sgd", "valid_loss", 60, "tpe", version=1)
    opened = open_storage(storage)
    optuna.copy_study(
        from_study_name=outcome.study,
        from_storage=opened.storage,
        to_storage=opened.storage,
        to_study_name=old,
    )
    optuna.delete_study(study_name=outcome.study, storage=opened.storage)
    _, tags = tuned_configuration(
        task="quadratic", optimizer="sgd", objective="valid_loss", budget_steps=60, storage=storage
    )
    assert tags["study"] == old


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_tuned_takes_hparams_and_tags_from_the_study(tmp_path, capsys) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    outcome = tune(settings(tmp_path), log=quiet)
    out = tmp_path / "tuned.csv"
    common = ["task=quadratic", "optimizer=sgd", "steps=60", f"tuning.storage={storage}"]
    assert main(["bench", *common, "tuned=true", f"out={out}"]) == 0
    frame = pd.read_csv(out)
    assert json.loads(frame.hparams[0]) == outcome.best_hparams
    assert json.loads(frame.tags[0])["trials"] == 6
    assert main(["bench", *common, "tuned=true", "optimizer.lr=0.1", f"out={out}.2.csv"]) == 2
    assert "drop optimizer.lr" in capsys.readouterr().err
    assert main(["bench", *common, "steps=50", "tuned=true", f"out={tmp_path / 'x.csv'}"]) == 2
    assert "lopt tune task=quadratic optimizer=sgd" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sampler=foo"], "sampler must be one of tpe, random, grid, qmc; got 'foo'"),
        (["trials=0"], "trials must be > 0"),
        (["storage=sqlite:////dev/null/sub/x.db"], "cannot open storage"),
        (["storage=nowhere"], "is not a URL"),
        (["search.lr=[a,b]"], "search.lr must be [LOW,HIGH]"),
        (["optimizer=momentum", "search.nesterov=[0,1]"], "is a bool"),
        (
            ["objective=test_loss"],
            "objective must be one of valid_loss, train_loss; got 'test_loss'",
        ),
        (["until=forever"], "until must be one of trials, saturated; got 'forever'"),
        (["until=saturated"], "trials is the cap and must be >= 32"),
    ],
)
def test_tune_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message) -> None:
    code = main(
        [
            "tune",
            "task=quadratic",
            "optimizer=sgd",
            "budget_steps=10",
            f"out={tmp_path / 'out'}",
            f"storage=sqlite:///{tmp_path}/o.db",
            *args,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_studies_writes_the_saturation_table_and_best_so_far_curves(tmp_path, capsys) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    names = [tune(settings(tmp_path, optimizer=o), log=quiet).study for o in ("sgd", "adam")]
    out = tmp_path / "studies"
    assert main(["studies", f"storage={storage}", f"out={out}"]) == 0
    table = pd.read_csv(out / "saturation.csv")
    assert sorted(table.study) == sorted(names) and (table.trials == 6).all()
    assert not table.saturated.any()
    assert table.verdict.str.contains("6 of at least 32 trials").all()
    assert {"second_half_gain", "diverged", "best_value"} <= set(table.columns)
    assert (table.trial_hours > 0).all() and (table.trial_hours < 0.5).all()  # 6 short trials
    assert "| study | trials |" in (out / "saturation.md").read_text()
    assert "| trial hours |" in (out / "saturation.md").read_text()
    for name in names:
        assert (out / name / "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out / "saturation.csv") in capsys.readouterr().out


TUNE = [
    sys.executable,
    "-m",
    "harness.cli",
    "tune",
    "task=quadratic",
    "optimizer=sgd",
    "budget_steps=3000",
    "eval_seeds=0",
    "pruner=none",
    "search.lr=[1e-5,1.0]",  # below 2 / lambda_max: every trial completes (none diverges)
    "heartbeat=1",  # a killed worker's trial is stale after 3 s
]


def _counted(storage: str, name: str) -> int:
    study = load_existing(open_storage(storage).storage, name)
    return 0 if study is None else len(count_trials(study).counted)


@pytest.mark.slow
def test_a_killed_tuning_run_is_completed_by_rerunning_it(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    name = study_name("quadratic", "sgd", "valid_loss", 3000, "tpe")
    command = [*TUNE, "trials=10", f"storage={storage}", f"out={tmp_path / 'out'}"]
    first = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _counted(storage, name) < 3 and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = _counted(storage, name)
    assert 3 <= before < 10, "the first process should have been killed part-way"
    second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    study = load_existing(open_storage(storage).storage, name)
    counts = count_trials(study)
    assert len(counts.counted) == 10 and not counts.in_flight and not counts.waiting
    by_rerun = [t for t in counts.counted if worker_pid(t) == second.pid]
    assert len(by_rerun) == 10 - before  # exactly the remaining trials
    for trial in counts.interrupted:  # a trial killed mid-run was queued again and redone
        assert any(t.user_attrs.get("retry_of") == trial.number for t in counts.counted)


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    """The pid in a trial's worker id (``host:pid:start``)."""
    return int(trial.user_attrs["worker"].rsplit(":", 2)[1])


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["sqlite", "journal"])
def test_two_processes_tune_one_study_without_lost_or_duplicated_trials(
    tmp_path, storage_kind
) -> None:
    storage = (
        f"sqlite:///{tmp_path}/optuna.db"
        if storage_kind == "sqlite"
        else f"journal:{tmp_path}/optuna.log"
    )
    command = [*TUNE, "trials=12", f"storage={storage}", f"out={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    name = study_name("quadratic", "sgd", "valid_loss", 3000, "tpe")
    study = load_existing(open_storage(storage).storage, name)
    trials = study.get_trials()
    assert len(trials) == 12 and {t.number for t in trials} == set(range(12))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(bool(t.user_attrs.get("defaults")) for t in trials) == 1
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part


def test_a_suite_refuses_baselines_tuned_with_different_budgets() -> None:
    def plan(name: str, trials: int, steps: int = 60, saturated: bool | None = None) -> RunPlan:
        tags = {"study": name, "trials": trials, "tuning_budget_steps": steps}
        if saturated is not None:
            tags["saturated"] = saturated
        return RunPlan(task="quadratic", optimizer=name, seed=0, tags=tags)

    # Fewer trials without the saturation rule (or failing it): the harder-tuned one is favoured.
    for short in (plan("sgd", 3), plan("sgd", 3, saturated=False)):
        with pytest.raises(UsageError, match="sgd has 3 trials and is not saturated"):
            check_fair_tuning("tuned", [short, plan("adam", 4)])
    with pytest.raises(UsageError, match="different tuning budgets \\(60 steps, 90 steps\\)"):
        check_fair_tuning("tuned", [plan("sgd", 4), plan("adam", 4, steps=90)])
    check_fair_tuning("tuned", [plan("sgd", 3)])  # one study: nothing to compare
    check_fair_tuning("tuned", [plan("sgd", 4), plan("adam", 4)])  # equal counts
    # Saturated with fewer trials, against one at the cap (saturated or not): fair.
    check_fair_tuning(
        "tuned", [plan("sgd", 44, saturated=True), plan("adam", 128, saturated=False)]
    )
    # Tasks are compared separately.
    other = RunPlan(task="other", optimizer="sgd", seed=0, tags=plan("x", 9).tags)
    check_fair_tuning("tuned", [plan("sgd", 4), other])

    # One objective's baselines averaged the same number of tuning seeds; objectives differ.
    def seeded(name: str, objective: str, seeds: int) -> RunPlan:
        tags = {**plan(name, 4).tags, "objective": objective, "tuning_seeds": seeds}
        return RunPlan(task="quadratic", optimizer=name, seed=0, tags=tags)

    mixed = [seeded("sgd", "train_loss", 1), seeded("adam", "train_loss", 2)]
    with pytest.raises(
        UsageError,
        match="train_loss baselines on quadratic were tuned with "
        "different numbers of tuning seeds \\(sgd 1, adam 2\\)",
    ):
        check_fair_tuning("tuned", mixed)
    check_fair_tuning("tuned", [seeded("sgd", "train_loss", 2), seeded("adam", "valid_loss", 1)])


def test_a_trial_asked_by_a_process_killed_before_it_recorded_itself_is_redone() -> None:
    """A process killed between asking for a trial and recording its worker id (both under the
    claim lock) leaves a running trial with no id: recovery requeues it like any orphan, so a
    rerun still completes the study (the kill-and-rerun test hit this window once in CI)."""
    study = optuna.create_study()
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
    assert recover_interrupted(study, None) == 1
    counts = count_trials(study)
    assert [t.number for t in counts.interrupted] == [orphan.number] and len(counts.waiting) == 1
    assert counts.waiting[0].user_attrs["retry_of"] == orphan.number


def test_a_postgresql_storage_without_a_driver_names_the_extra(monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("psycopg", "psycopg2") else real(name, *a),
    )
    args = ["tune", "task=quadratic", "optimizer=sgd", "storage=postgresql://u@127.0.0.1:1/db"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        'no PostgreSQL driver is installed; install one with pip install "lopt-harness[postgres]"'
        in err
    )


def test_without_a_claim_lock_a_trial_asked_beyond_the_count_is_dropped(tmp_path) -> None:
    """On a storage whose claims are not exclusive (a database other than PostgreSQL), two
    workers can both see one trial left and both ask: the one whose trial is not among the
    first ``trials`` claimed by number marks it surplus and does not run it, so exactly
    ``trials`` are counted."""
    from harness.tuning.storage import OpenedStorage
    from harness.tuning.tuner import _claim_trial

    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat=5).storage
    opened = OpenedStorage("sqlite:///x", storage, heartbeat=5)  # no lock: not exclusive
    assert not opened.exclusive
    study = optuna.create_study(storage=storage, study_name="race")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    first = _claim_trial(study, opened, lr, 2, "me")
    racer = study.ask(lr)  # another worker's claim, made at the same time as the next one
    late = _claim_trial(study, opened, lr, 2, "me")
    assert first is not None and racer.number == 1 and late is None
    counts = count_trials(study)
    assert [t.number for t in counts.surplus] == [2]
    assert counts.claimed == 2
    assert first.user_attrs["heartbeat_s"] == 5  # its first heartbeat is recorded
