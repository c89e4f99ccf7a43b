"""The tuning protocol, study names, and the bookkeeping that makes studies resumable.

A study is named from what defines it (``study_name``): task, optimizer, objective, step budget,
sampler and the protocol version (plus an optional tag). Everything else that changes the
objective (search space, fixed hyperparameters, tuning seeds, pruner, ...) is stored with the
study as its protocol; reopening a study with a different protocol is refused rather than
silently mixing two experiments.

Trial states, and what counts towards the study's ``trials``:

* ``COMPLETE``: counted; its value is the objective. Since protocol version 2, a trial whose run
  diverged is also ``COMPLETE``, marked ``diverged`` (with its ``fail_reason``), and its value is
  a penalty: the worst finite objective value seen on the diverging run, at least the untrained
  model's loss (step 0). So TPE learns that the region is bad instead of sampling it again; a
  diverged trial is never a study's best.
* ``PRUNED``: counted (the pruner stopped it: a trial the budget paid for).
* ``FAIL`` with ``fail_reason`` ``diverged ...``: counted (protocol version 1 recorded diverged
  trials so; TPE ignores failed trials).
* ``FAIL`` marked interrupted (a study attribute ``interrupted_trial_<n>``): not counted. A
  trial left ``RUNNING`` by a process that no longer exists (killed, even by ``kill -9``) is
  marked so when any worker on the same machine starts, and its parameters are queued again, so
  a rerun finishes exactly the missing trials and loses no sampled configuration.
* ``RUNNING`` by a live process: counted as in flight (another worker is doing it).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import UsageError
from harness.settings.tune import OBJECTIVES
from harness.tuning.space import SearchSpace

#: 2: diverged trials complete with a penalty value (1: they failed); ``until=saturated``.
PROTOCOL_VERSION = 2

ATTR_PROTOCOL = "protocol"
ATTR_DEFAULTS_QUEUED = "defaults_queued"
ATTR_TRIALS = "trials"  # the study's result is its first ``trials`` counted trials
ATTR_UNTIL = "until"  # the stop rule of the last tuning run: "trials" or "saturated"
ATTR_DIVERGED = "diverged"  # trial attribute: the run diverged; its value is the penalty


@dataclass(frozen=True)
class Protocol:
    """Everything that defines a study's objective. Stored with the study as JSON."""

    task: str
    task_cfg: dict[str, Any]
    optimizer: str
    fixed_hparams: dict[str, Any]
    space: dict[str, dict[str, Any]]
    objective: str
    objective_at: str
    budget_steps: int
    seeds: list[int]
    eval_every: int
    sampler: str
    sampler_seed: int
    grid_points: int
    pruner: str
    version: int = PROTOCOL_VERSION
    tag: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def split(self) -> str:
        return OBJECTIVES[self.objective]


def study_name(
    task: str,
    optimizer: str,
    objective: str,
    budget_steps: int,
    sampler: str,
    tag: str = "",
    version: int = PROTOCOL_VERSION,
) -> str:
    """E.g. ``mnist5k_cnn16-adam-valid_loss-300steps-tpe-p2`` (``-TAG`` appended if given)."""
    name = f"{task}-{optimizer}-{objective}-{budget_steps}steps-{sampler}-p{version}"
    return f"{name}-{tag}" if tag else name


def space_as_data(space: SearchSpace) -> dict[str, dict[str, Any]]:
    return {name: dim.as_dict() for name, dim in sorted(space.items())}


@dataclass
class Counts:
    """Trials of a study, by how they count (see the module docstring)."""

    counted: list[FrozenTrial] = field(default_factory=list)
    in_flight: list[FrozenTrial] = field(default_factory=list)
    waiting: list[FrozenTrial] = field(default_factory=list)
    interrupted: list[FrozenTrial] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        """Trials done or being done: a new trial may start while this is below ``trials``."""
        return len(self.counted) + len(self.in_flight)


def count_trials(study: optuna.Study) -> Counts:
    counts = Counts()
    attrs = study.user_attrs
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            counts.counted.append(trial)
        elif trial.state == TrialState.FAIL:
            if attrs.get(interrupted_key(trial.number)):
                counts.interrupted.append(trial)
            else:
                counts.counted.append(trial)
        elif trial.state == TrialState.RUNNING:
            counts.in_flight.append(trial)
        elif trial.state == TrialState.WAITING:
            counts.waiting.append(trial)
    return counts


def counted_trials(study: optuna.Study, trials: int) -> list[FrozenTrial]:
    """The study's result: its first ``trials`` counted trials, by trial number."""
    return sorted(count_trials(study).counted, key=lambda t: t.number)[:trials]


def is_diverged(trial: FrozenTrial) -> bool:
    """Whether the trial's run diverged (version 2: marked; version 1: failed so)."""
    if trial.user_attrs.get(ATTR_DIVERGED):
        return True
    reason = str(trial.user_attrs.get("fail_reason", ""))
    return trial.state == TrialState.FAIL and reason.startswith("diverged")


def best_trial(study: optuna.Study, trials: int) -> FrozenTrial | None:
    """The completed, non-diverged trial with the lowest objective among the counted ones
    (None if none)."""
    complete = [
        t
        for t in counted_trials(study, trials)
        if t.state == TrialState.COMPLETE and not is_diverged(t)
    ]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def load_or_create(
    storage: optuna.storages.BaseStorage,
    name: str,
    protocol: Protocol,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study ``name`` (created if new); ``UsageError`` if it exists with another protocol."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get(ATTR_PROTOCOL)
    if stored is None:
        study.set_user_attr(ATTR_PROTOCOL, protocol.to_json())
    elif stored != protocol.to_json():
        differences = _differences(json.loads(stored), json.loads(protocol.to_json()))
        raise UsageError(
            f"study {name!r} already exists with another protocol ({differences}): rerun with "
            "the same settings, or give this experiment its own name with tag=..."
        )
    return study


def _differences(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(stored) | set(asked) if stored.get(k) != asked.get(k))
    return "; ".join(f"{k}: stored {stored.get(k)!r}, asked {asked.get(k)!r}" for k in keys[:3])


def load_existing(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The study ``name`` if it exists in ``storage``, else None."""
    names = set(optuna.get_all_study_names(storage))  # summaries would compute best trials
    if name not in names:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def stored_protocol(study: optuna.Study) -> dict[str, Any]:
    return json.loads(study.user_attrs[ATTR_PROTOCOL])


# -- workers and interrupted trials ----------------------------------------------------------------
def worker_id(pid: int | None = None) -> str:
    """``host:pid:start-time`` of a process (the start time guards against reused pids)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat: start time in clock ticks since boot
    except (OSError, IndexError):
        return "?"


def _worker_alive(worker: str) -> bool | None:
    """True/False for a worker on this host; None when it runs elsewhere (unknown)."""
    try:
        host, pid, start = worker.rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return start == "?" or _start_time(int(pid)) == start


def interrupted_key(number: int) -> str:
    """The study attribute that marks trial ``number`` as interrupted (one key per trial, so
    concurrent writers never overwrite each other)."""
    return f"interrupted_trial_{number}"


def recover_interrupted(study: optuna.Study) -> int:
    """Fail and requeue the running trials of dead processes on this machine.

    Call it while holding the storage's claim lock. A running trial without a worker id is an
    orphan too: a process asks for a trial and records its id under that same lock, so only a
    process killed between the two leaves one. Returns how many were recovered.
    """
    recovered = 0
    for trial in count_trials(study).in_flight:
        worker = trial.user_attrs.get("worker")
        if worker is not None and _worker_alive(str(worker)) is not False:
            continue
        study.set_user_attr(interrupted_key(trial.number), True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered += 1
    return recovered
