"""The tuning protocol, study names, and the bookkeeping that makes studies resumable.

A study is named from what defines it (``study_name``): task (for a task family, the member),
optimizer, objective, step budget, sampler and the protocol version (plus an optional tag).
Everything else that changes the objective (search space, fixed hyperparameters, tuning seeds,
pruner, ...) is stored with the study as its protocol; reopening a study with a different
protocol is refused rather than silently mixing two experiments.

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
  trial whose worker died (killed, even by ``kill -9``, or its machine lost) is found by its
  heartbeat, older than the storage's grace period, by any worker of the study on any machine;
  it is failed, marked so, and its parameters are queued again (``retry_of``), once, so the
  study finishes exactly the missing trials and loses no sampled configuration. A worker that
  stops in the middle of a trial (Ctrl-C, an error) re-queues its own trial at once.
* ``FAIL`` marked surplus (``surplus_trial_<n>``): not counted; asked beyond the study's count
  in a race on a storage without a claim lock, and dropped before it ran.
* ``RUNNING``: in flight (a worker is doing it, or it is stale and will be recovered).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import UsageError
from harness.settings.tune import OBJECTIVES
from harness.tuning.space import SearchSpace
from harness.tuning.storage import fail_once, fail_stale

#: 2: diverged trials complete with a penalty value (1: they failed); ``until=saturated``.
PROTOCOL_VERSION = 2

ATTR_PROTOCOL = "protocol"
ATTR_DEFAULTS_QUEUED = "defaults_queued"
ATTR_TRIALS = "trials"  # the study's result is its first ``trials`` counted trials
ATTR_UNTIL = "until"  # the stop rule of the last tuning run: "trials" or "saturated"
ATTR_DIVERGED = "diverged"  # trial attribute: the run diverged; its value is the penalty
ATTR_HEARTBEAT = "heartbeat_s"  # trial attribute: its worker's heartbeat interval, once it beats
ATTR_FINISHER = "finisher"  # the lease of the worker finishing the study: {"worker", "beat"}


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
    *,
    task_cfg: Mapping[str, Any] | None = None,
) -> str:
    """E.g. ``mnist5k_cnn16-adam-valid_loss-300steps-tpe-p2`` (``-TAG`` appended if given).

    For a task family's member the task part names the member (:func:`study_task`), e.g.
    ``mlp_mix.m1100001-adam-...``: each member has studies of its own."""
    task = study_task(task, task_cfg)
    name = f"{task}-{optimizer}-{objective}-{budget_steps}steps-{sampler}-p{version}"
    return f"{name}-{tag}" if tag else name


def study_task(task: str, task_cfg: Mapping[str, Any] | None) -> str:
    """The task part of a study's name: ``task``, or for a task family (``task.member`` picks
    one sampled task) ``mlp_mix.m1100001`` (``member`` from ``task_cfg``; the family's default,
    0, when it is unset). Free of shell pattern characters: it also names the study's folder."""
    from harness.results.members import family_names

    if task not in family_names():
        return task
    member = (task_cfg or {}).get("member", 0)
    if isinstance(member, bool) or not isinstance(member, int):
        raise UsageError(f"{task}: task.member must be an integer, got {member!r}")
    return f"{task}.m{member}"


def space_as_data(space: SearchSpace) -> dict[str, dict[str, Any]]:
    return {name: dim.as_dict() for name, dim in sorted(space.items())}


@dataclass
class Counts:
    """Trials of a study, by how they count (see the module docstring)."""

    counted: list[FrozenTrial] = field(default_factory=list)
    in_flight: list[FrozenTrial] = field(default_factory=list)
    waiting: list[FrozenTrial] = field(default_factory=list)
    interrupted: list[FrozenTrial] = field(default_factory=list)
    surplus: list[FrozenTrial] = field(default_factory=list)

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
            elif attrs.get(surplus_key(trial.number)):
                counts.surplus.append(trial)
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
#: a trial re-queued this many times is not re-queued again (a run that kills its worker)
MAX_RETRIES = 3


def worker_id(pid: int | None = None) -> str:
    """``host:pid:token`` of this process (the token tells apart reused pids and hosts that
    share a name)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_TOKEN}"


_TOKEN = uuid.uuid4().hex[:12]


def interrupted_key(number: int) -> str:
    """The study attribute that marks trial ``number`` as interrupted (one key per trial, so
    concurrent writers never overwrite each other)."""
    return f"interrupted_trial_{number}"


def surplus_key(number: int) -> str:
    """The study attribute that marks trial ``number`` as surplus: asked in a race beyond the
    study's trial count on a storage without a claim lock, and dropped unrun."""
    return f"surplus_trial_{number}"


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Mark the failed ``trial`` as interrupted (not counted) and queue its parameters again
    (``retry_of``: the original trial's number), at most :data:`MAX_RETRIES` times per
    configuration. The stale-trial callback of the tuner's storages."""
    study.set_user_attr(interrupted_key(trial.number), True)
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES:
        return
    original = trial.user_attrs.get("retry_of", trial.number)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": original, "retries": retries + 1})


def recover_interrupted(study: optuna.Study, grace_s: float | None) -> int:
    """Fail and re-queue the running trials whose workers are gone; how many were recovered.

    Call it holding the storage's claim lock. A trial is gone when its heartbeat is older than
    the grace period (Optuna's :func:`~optuna.storages.fail_stale_trials`, whose callback is
    :func:`requeue`), or when it has no :data:`ATTR_HEARTBEAT` and started more than
    ``grace_s`` ago: a worker records the first heartbeat, then that attribute, right after
    asking for a trial, so only a worker killed in between (or a harness before heartbeats)
    leaves one. ``grace_s=None`` (no heartbeats, e.g. in memory): every such trial.
    """
    before = {t.number for t in count_trials(study).interrupted}
    fail_stale(study)
    for trial in count_trials(study).in_flight:
        if trial.user_attrs.get(ATTR_HEARTBEAT) is not None:
            continue
        started = trial.datetime_start
        if grace_s is not None and started is not None:
            now = datetime.datetime.now(started.tzinfo)  # RDB: naive local time; journal: UTC
            if (now - started).total_seconds() <= grace_s:
                continue
        if fail_once(study._storage, trial._trial_id):
            requeue(study, study._storage.get_trial(trial._trial_id))
    return len({t.number for t in count_trials(study).interrupted} - before)
