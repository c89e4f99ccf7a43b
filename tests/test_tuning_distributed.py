"""Workers sharing one study: on a real PostgreSQL server (tests/pg_server.py, skipped with the
reason where none can be started) and on a journal file; one worker killed with SIGKILL in the
middle of a trial; a load run of 8 workers. Every check reads the storage afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from harness.results.schema import canonical_json
from harness.tuning.saturation import ATTR_CONFIRMATION
from harness.tuning.storage import open_storage
from harness.tuning.study import (
    ATTR_DEFAULTS_QUEUED,
    ATTR_FINISHER,
    count_trials,
    load_existing,
    load_or_create,
    study_name,
)
from harness.tuning.tuner import TuneSettings, make_pruner, make_sampler, prepare

pytestmark = pytest.mark.slow

BUDGET = 1000  # steps of the quadratic: about a second a trial on a loaded 2-core machine
TUNE = [
    sys.executable,
    "-m",
    "harness.cli",
    "tune",
    "task=quadratic",
    "optimizer=sgd",
    "eval_seeds=0",
    "pruner=none",
    "search.lr=[1e-5,1.0]",  # below 2 / lambda_max: every trial completes (none diverges)
    "heartbeat=4",  # a killed worker's trial is stale after 12 s (2 s flaked on 2 busy cores)
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _study(storage: str, budget: int, objective: str = "valid_loss") -> optuna.Study | None:
    name = study_name("quadratic", "sgd", objective, budget, "tpe")
    return load_existing(open_storage(storage, create=False).storage, name)


def _start(storage: str, out: Path, trials: int, budget: int, n: int) -> list[subprocess.Popen]:
    command = [*TUNE, f"budget_steps={budget}", f"trials={trials}", f"storage={storage}"]
    return [
        subprocess.Popen(
            [*command, f"out={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV
        )
        for _ in range(n)
    ]


def _wait(workers: list[subprocess.Popen], timeout: float = 600) -> None:
    for worker in workers:
        _, err = worker.communicate(timeout=timeout)
        assert worker.returncode == 0, err.decode()[-2000:]


def _pid(trial: optuna.trial.FrozenTrial) -> int | None:
    worker = trial.user_attrs.get("worker")
    return None if worker is None else int(str(worker).rsplit(":", 2)[1])


def _running(storage: str, victim: subprocess.Popen) -> tuple[int, list[int]]:
    """How many trials are counted, and the numbers of the trials ``victim`` is running."""
    study = _study(storage, BUDGET) if _exists(storage) else None
    if study is None:
        return 0, []
    counts = count_trials(study)
    return len(counts.counted), [t.number for t in counts.in_flight if _pid(t) == victim.pid]


def _kill_in_a_trial(storage: str, victim: subprocess.Popen, after: int) -> int:
    """SIGKILL ``victim`` while it runs a trial, once ``after`` trials are counted; the number
    of the trial it was running.

    The victim is frozen (SIGSTOP) and the storage read again before the kill: a trial seen
    running may have ended between the read and the signal (CI saw one killed between trials),
    and a frozen worker writes nothing more. If its trial ended, it is let go and tried again."""
    deadline = time.time() + 300
    while time.time() < deadline:
        counted, mine = _running(storage, victim)
        if counted >= after and mine:
            victim.send_signal(signal.SIGSTOP)
            time.sleep(0.5)  # let the server apply whatever the worker sent before it froze
            _, still = _running(storage, victim)
            if still:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                return still[0]
            victim.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the victim never ran a trial")


def _exists(storage: str) -> bool:
    if storage.startswith("journal:"):
        return Path(storage.removeprefix("journal:")).is_file()
    try:
        return _study(storage, BUDGET) is not None
    except Exception:  # the schema is not there yet
        return False


def check_study(storage: str, budget: int, trials: int) -> dict[str, int]:
    """Exactly ``trials`` counted trials, each complete with its value and configuration in the
    storage, none repeated, nothing left running or queued; the figures."""
    study = _study(storage, budget)
    assert study is not None
    counts = count_trials(study)
    assert len(counts.counted) == trials
    assert not counts.in_flight and not counts.waiting and not counts.surplus
    counted = counts.counted
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    assert all(t.value is not None and "hparams" in t.user_attrs for t in counted)
    configurations = [t.params["lr"] for t in counted]
    duplicates = len(configurations) - len(set(configurations))
    assert duplicates == 0, f"{duplicates} configurations were tried twice"
    return {
        "counted": len(counted),
        "duplicates": duplicates,
        "interrupted": len(counts.interrupted),
        "workers": len({t.user_attrs["worker"] for t in counted}),
    }


def fault_test(storage: str, out: Path) -> None:
    """3 workers, a cap of 24 trials, one worker killed in the middle of a trial."""
    started = time.perf_counter()
    workers = _start(storage, out, 24, BUDGET, 3)
    killed = _kill_in_a_trial(storage, workers[0], after=4)
    _wait(workers[1:])
    figures = check_study(storage, BUDGET, 24)
    study = _study(storage, BUDGET)
    counts = count_trials(study)
    assert [t.number for t in counts.interrupted] == [killed]
    retries = [t for t in counts.counted if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1  # the killed trial was re-run once, by a surviving worker
    lost = next(t for t in counts.interrupted if t.number == killed)
    assert retries[0].params == lost.params and _pid(retries[0]) != workers[0].pid
    print(
        f"\n{storage.split(':')[0]}: 3 workers, one killed in trial {killed}: {figures}, "
        f"recovered 1, {time.perf_counter() - started:.1f} s"
    )


def test_three_workers_on_postgresql_survive_a_killed_worker(postgres_server, tmp_path) -> None:
    fault_test(postgres_server.database("fault"), tmp_path / "out")


def test_three_workers_on_a_journal_file_survive_a_killed_worker(tmp_path) -> None:
    fault_test(f"journal:{tmp_path}/optuna.log", tmp_path / "out")


def test_a_worker_killed_while_writing_the_journal_stalls_nobody(tmp_path) -> None:
    """A process SIGKILLed while it holds the journal's append lock: the next write goes
    through at once. (Optuna's default lock, a symbolic link, made every other worker wait 30
    s for it, longer than a 4 s heartbeat's grace, and live trials were then judged stale:
    CI saw a survivor's trial failed beside the killed one's.)"""
    url = f"journal:{tmp_path}/optuna.log"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from harness.tuning.storage import open_storage\n"
            f"opened = open_storage({url!r}, heartbeat=4)\n"
            "opened.storage._backend._lock.acquire()  # as in the middle of an append\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        env=ENV,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    holder.kill()
    holder.wait()
    opened = open_storage(url, heartbeat=4)
    started = time.perf_counter()
    optuna.create_study(storage=opened.storage, study_name="after-the-kill")
    waited = time.perf_counter() - started
    assert waited < 4, f"the write waited {waited:.1f} s for a dead worker's lock"


def test_eight_workers_on_postgresql_lose_and_repeat_nothing(postgres_server, tmp_path) -> None:
    """The load run: 8 workers, 64 trials, against one worker on the same server."""
    budget = 100
    seconds = {}
    for n in (8, 1):
        storage = postgres_server.database(f"load{n}")
        started = time.perf_counter()
        _wait(_start(storage, tmp_path / f"out{n}", 64, budget, n))
        seconds[n] = time.perf_counter() - started
        figures = check_study(storage, budget, 64)
        assert figures["interrupted"] == 0
    print(
        f"\npostgresql load: 64 trials of {budget} steps, 8 workers {seconds[8]:.1f} s, "
        f"1 worker {seconds[1]:.1f} s ({os.cpu_count()} cores)"
    )


def test_the_confirmation_runs_once_whoever_finishes_last(tmp_path) -> None:
    """Two workers finish a study whose values fail the saturation rule at its cap: one of them
    (under the finishing lease) re-runs the halves' bests on fresh seeds, the other does not."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    asked = TuneSettings(
        task="quadratic",
        optimizer="sgd",
        trials=32,
        until="saturated",
        objective="train_loss",
        budget_steps=BUDGET,
        eval_seeds=0,
        confirm_seeds=2,
        pruner="none",
        search={"lr": [0.001, 1.9]},
        storage=storage,
        out=str(tmp_path / "out"),
    )
    protocol, space, base = prepare(asked)
    name = study_name("quadratic", "sgd", "train_loss", BUDGET, "tpe")
    study = load_or_create(
        open_storage(storage).storage, name, protocol, make_sampler(protocol, space),
        make_pruner(protocol),
    )  # fmt: skip
    study.set_user_attr(ATTR_DEFAULTS_QUEUED, True)
    distributions = {n: dim.distribution() for n, dim in space.items()}
    for number in range(30):  # the second half's trial 20 is 50% better: the values fail the rule
        lr, value = (0.3 + number / 100, 0.5 if number == 20 else 1.0)
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions=distributions,
                value=value,
                user_attrs={"hparams": canonical_json({**base, "lr": lr})},
            )
        )
    command = [
        *TUNE[:-2], "search.lr=[0.001,1.9]", "heartbeat=2", "trials=32", "until=saturated",
        "objective=train_loss", f"budget_steps={BUDGET}", "confirm_seeds=2", f"storage={storage}",
        f"out={tmp_path / 'out'}",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        for _ in range(2)
    ]
    logs = []
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err.decode()[-2000:]
        logs.append(err.decode())
    assert sum(log.count("re-running trials") for log in logs) == 1
    study = _study(storage, BUDGET, "train_loss")
    assert len(count_trials(study).counted) == 32
    assert study.user_attrs[ATTR_CONFIRMATION]["trials"] == 32
    assert not study.user_attrs[ATTR_FINISHER]  # the lease was given back
