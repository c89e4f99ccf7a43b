"""Issue 27: a resumed, extended or shared study proposes new configurations (item 1), and a
look-up of tuned hyperparameters writes nothing and names the studies that exist (item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.tuning import tuner as tuner_module
from harness.tuning.storage import open_storage
from harness.tuning.study import count_trials, load_existing
from harness.tuning.tuner import TuneSettings, TuningStopped, tune, tuned_configuration

NAME = "quadratic-sgd-valid_loss-60steps-tpe-p2"
ROOT = Path(__file__).resolve().parent.parent


def quiet(_message: str) -> None:
    pass


def settings(folder: Path, **changes) -> TuneSettings:
    base = {
        "task": "quadratic",
        "optimizer": "sgd",
        "trials": 6,
        "budget_steps": 60,
        "eval_seeds": 0,
        "pruner": "none",
        "storage": f"sqlite:///{folder}/optuna.db",
        "out": str(folder / "out"),
    }
    return TuneSettings(**{**base, **changes})


def proposals(folder: Path) -> list[float]:
    """The learning rates of the study's counted trials, by trial number."""
    study = load_existing(open_storage(f"sqlite:///{folder}/optuna.db").storage, NAME)
    return [t.params["lr"] for t in sorted(count_trials(study).counted, key=lambda t: t.number)]


def test_an_extended_study_proposes_what_an_uninterrupted_one_would(tmp_path) -> None:
    tune(settings(tmp_path / "whole"), log=quiet)
    tune(settings(tmp_path / "extended", trials=3), log=quiet)
    tune(settings(tmp_path / "extended", trials=6), log=quiet)  # the trials=3, then 6
    whole, extended = proposals(tmp_path / "whole"), proposals(tmp_path / "extended")
    assert len(set(extended)) == 6  # before: trials 3 and 4 were trials 1 and 2 again
    assert extended == whole


def test_a_study_resumed_after_a_stop_proposes_what_an_uninterrupted_one_would(tmp_path) -> None:
    asked = []

    def stop() -> bool:  # stop after 3 trials, as Ctrl-C between trials does
        asked.append(True)
        return len(asked) > 3

    with pytest.raises(TuningStopped):
        tune(settings(tmp_path / "resumed"), log=quiet, stop=stop)
    tune(settings(tmp_path / "resumed"), log=quiet)
    tune(settings(tmp_path / "whole"), log=quiet)
    assert proposals(tmp_path / "resumed") == proposals(tmp_path / "whole")


def test_a_trial_stopped_part_way_is_requeued_at_once_and_nothing_repeats(
    tmp_path, monkeypatch
) -> None:
    """Ctrl-C in the middle of a trial: the trial is re-queued before the process ends, so the
    rerun redoes that configuration (and no other) without waiting for a heartbeat."""
    real = tuner_module.evaluate_configuration
    calls = []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(True)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tuner_module, "evaluate_configuration", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        tune(settings(tmp_path), log=quiet)
    monkeypatch.setattr(tuner_module, "evaluate_configuration", real)
    study = load_existing(open_storage(f"sqlite:///{tmp_path}/optuna.db").storage, NAME)
    (lost,) = count_trials(study).interrupted
    assert len(count_trials(study).waiting) == 1
    assert tune(settings(tmp_path), log=quiet).ran == 4
    counts = count_trials(study)
    assert len(counts.counted) == 6 and not counts.in_flight and not counts.waiting
    (retry,) = [t for t in counts.counted if t.user_attrs.get("retry_of") == lost.number]
    assert retry.params == lost.params
    assert len({t.params["lr"] for t in counts.counted}) == 6


def test_two_processes_sharing_a_study_propose_distinct_configurations(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    command = [
        sys.executable, "-m", "harness.cli", "tune", "task=quadratic", "optimizer=sgd",
        "budget_steps=1000", "eval_seeds=0", "pruner=none", "search.lr=[1e-5,1.0]",
        "trials=10", "heartbeat=2", f"storage={storage}", f"out={tmp_path / 'out'}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    study = load_existing(
        open_storage(storage).storage, "quadratic-sgd-valid_loss-1000steps-tpe-p2"
    )
    trials = count_trials(study).counted
    assert len(trials) == 10
    assert len({t.params["lr"] for t in trials}) == 10  # before: both replayed the same draws
    assert len({t.user_attrs["worker"] for t in trials}) == 2


# -- look-ups (item 7) -----------------------------------------------------------------------------
def test_studies_of_a_storage_that_does_not_exist_writes_nothing(tmp_path, capsys) -> None:
    code = main(["studies", f"storage=sqlite:///{tmp_path}/nothere.db", f"out={tmp_path}/out"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothere.db" in err and "does not exist" in err
    assert list(tmp_path.iterdir()) == []  # no database, no .claim file, no out folder
    code = main(["studies", f"storage=journal:{tmp_path}/sub/nothere.log", f"out={tmp_path}/o"])
    assert code == 2 and list(tmp_path.iterdir()) == []


def test_a_mistyped_tuning_storage_writes_nothing_and_names_the_studies(tmp_path, capsys) -> None:
    tune(settings(tmp_path, tag="mine"), log=quiet)
    before = sorted(p.name for p in tmp_path.iterdir())
    run = ["bench", "task=quadratic", "optimizer=sgd", "steps=60", "tuned=true"]
    out = f"out={tmp_path / 'runs.csv'}"
    assert main([*run, f"tuning.storage=sqlite:///{tmp_path}/optuna-typo.db", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optuna-typo.db" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # The right storage without the tag: the message names the study and how to select it.
    assert main([*run, f"tuning.storage=sqlite:///{tmp_path}/optuna.db", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{NAME}-mine (tuning.objective=valid_loss tuning.budget_steps=60" in err
    assert "tuning.tag=mine" in err
    tagged = [*run, f"tuning.storage=sqlite:///{tmp_path}/optuna.db", "tuning.tag=mine", out]
    assert main(tagged) == 0 and (tmp_path / "runs.csv").is_file()


def test_a_failed_look_up_names_the_shipped_studies_and_leaves_them_alone(tmp_path) -> None:
    shipped = ROOT / "results" / "paper" / "optuna.db"
    if not shipped.is_file():
        pytest.skip("the shipped studies are not in this checkout")
    stamp = (shipped.stat().st_mtime_ns, shipped.stat().st_size)
    with pytest.raises(UsageError) as raised:
        tuned_configuration(
            task="mnist5k_cnn16",
            optimizer="adam",
            objective="valid_loss",
            budget_steps=2000,
            storage=f"sqlite:///{tmp_path}/optuna.db",  # the default storage, not made yet
        )
    message = str(raised.value)
    assert "\n" not in message and "does not exist" in message
    assert "mnist5k_cnn16-adam-valid_loss-2000steps-tpe-p2-paper (" in message
    assert "tuning.tag=paper tuning.storage=sqlite:///" in message
    assert (shipped.stat().st_mtime_ns, shipped.stat().st_size) == stamp
    assert list(tmp_path.iterdir()) == []
