"""Meta-training: it learns, resumes exactly (also after a kill), keeps memory flat, schedules and
resets its inner problems, logs a tidy table, and refuses bad configurations in one line."""

from __future__ import annotations

import gc
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.errors import UsageError
from harness.meta import MetaTrainConfig, meta_train
from harness.meta.checkpoint import load_trainer_state
from harness.meta.estimators import ESTIMATORS
from harness.meta.trainer import LOG_COLUMNS, METRICS, build_trainer
from harness.meta.truncation import ConstantSchedule, InnerProblems, LinearSchedule
from harness.registry import create_optimizer, create_task
from harness.resolve import resolve_meta
from harness.settings.meta import coerce_config
from optimizers.checkpoint import load_lopt_checkpoint
from optimizers.learned import LOptArchitecture, MLPLearner, init_theta

#: a quick setting on the quadratic task (one thread: stable timings on a busy 2-core machine)
QUICK = {
    "task": "quadratic",
    "problems": 4,
    "horizon": 40,
    "outer_batches": 2,
    "schedule": "constant",
    "unroll_length": 6,
    "progress": False,
    "threads": 1,
    "eval_every": 0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# -- it learns -------------------------------------------------------------------------------------
def outer_loss(task, theta, arch, steps: int, problems: int = 8) -> float:
    """The outer loss (mean clipped loss over steps) of fresh problems unrolled from t = 0."""
    inner = InnerProblems(
        task,
        MLPLearner.of(arch),
        num_problems=1,
        horizon=10_000,
        outer_batches=1,
        objective="train",
        seed=999,  # not a meta-training seed: unseen initialisations and batches
    )
    total = 0.0
    for i in range(problems):
        state = inner.fresh_state(i, 0)
        loss, _ = inner.unroll(theta, state, inner.data(i, state, steps), grad_mode="none")
        total += float(loss)
    return total / problems


def adam_outer_loss(task, steps: int, problems: int = 8) -> float:
    """The same outer loss for Adam at its default learning rate, same inits and batches."""
    inner = InnerProblems(
        task,
        MLPLearner.of(),
        num_problems=1,
        horizon=10_000,
        outer_batches=1,
        objective="train",
        seed=999,
    )
    adam = create_optimizer("adam")
    total = 0.0
    for i in range(problems):
        state = inner.fresh_state(i, 0)
        data = inner.data(i, state, steps)
        params, opt_state = state.params, adam.init(state.params)
        for batch, outer in zip(data.inner, data.outer, strict=True):
            params = tuple(p.detach().requires_grad_(True) for p in params)
            grads = torch.autograd.grad(task.loss(params, batch).clamp(max=10), params)
            with torch.no_grad():
                params, opt_state = adam.update(grads, opt_state, params)
                loss = task.loss(params, tuple(x[0] for x in outer)).clamp(max=10)
            total += float(loss) / steps
    return total / problems


@pytest.mark.slow
def test_meta_training_beats_the_untrained_optimizer_and_adam(tmp_path: Path) -> None:
    """100 outer steps (merged estimator, vmap, ~10 s) on the quadratic task: on fresh problems
    the learned optimizer's outer loss over a 50-step unroll falls below the untrained one's and
    below Adam's at lr 1e-3; the checkpoint trains through the harness runner too."""
    start = time.perf_counter()
    path = meta_train(
        **{**QUICK, "problems": 8, "horizon": 200, "unroll_length": 10, "outer_batches": 1},
        parallel="vmap",
        outer_steps=100,
        lr=3e-3,
        out=str(tmp_path / "meta"),
    )
    seconds = time.perf_counter() - start
    loaded = load_lopt_checkpoint(path)
    task = create_task("quadratic")
    arch = LOptArchitecture()
    trained = outer_loss(task, loaded.theta, arch, steps=50)
    untrained = outer_loss(task, init_theta(arch), arch, steps=50)
    adam = adam_outer_loss(task, steps=50)
    print(
        f"outer loss: trained {trained:.4f}, untrained {untrained:.4f}, adam {adam:.4f}; "
        f"meta-training {seconds:.1f} s"
    )
    assert trained < 0.5 * untrained and trained < 0.5 * adam
    assert seconds < 60

    from harness.runner import run

    result = run("quadratic", "lopt", {"checkpoint": str(path)}, steps=50, warmup_steps=0)
    baseline = run("quadratic", "adam", steps=50, warmup_steps=0)
    assert result.final("train") < baseline.final("train")
    assert loaded.meta_training["task"] == "quadratic" and loaded.meta_training["outer_step"] == 100


# -- resume ----------------------------------------------------------------------------------------
def log_values(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "meta_log.csv")
    timings = frame.metric.isin(["seconds", "cpu_seconds"])  # clocks differ from run to run
    return frame[~timings][["outer_step", "metric", "value"]].reset_index(drop=True)


@pytest.mark.parametrize(
    ("parallel", "estimator", "extra"),
    [
        ("loop", "merged", {}),
        ("vmap", "merged", {}),
        ("loop", "pes", {"loss": "log", "outer_every": 2, "eval_every": 3}),
    ],
)
def test_resume_reproduces_an_uninterrupted_run(
    tmp_path: Path, parallel: str, estimator: str, extra: dict
) -> None:
    """6 outer steps in one go, and 3 + resume to 6, give bit-identical theta and identical
    logs (resets, unroll lengths and held-out evaluations included); for PES too, whose state
    is two trajectories and the accumulated perturbation per problem."""
    settings = {
        **QUICK,
        "parallel": parallel,
        "checkpoint_every": 3,
        "estimator": estimator,
        "horizon": 15,
        **extra,
    }
    whole = Path(meta_train(**settings, outer_steps=6, out=str(tmp_path / "a"))).parent
    meta_train(**settings, outer_steps=3, out=str(tmp_path / "b"))
    resumed = Path(meta_train(**settings, outer_steps=6, out=str(tmp_path / "b"))).parent
    assert torch.equal(
        load_lopt_checkpoint(whole / "lopt.pt").theta,
        load_lopt_checkpoint(resumed / "lopt.pt").theta,
    )
    pd.testing.assert_frame_equal(log_values(whole), log_values(resumed))
    assert (resumed / "lopt_step000003.safetensors").is_file()
    assert (resumed / "lopt_step000006.safetensors").is_file()
    state = load_trainer_state(resumed / "trainer_state.pt")
    assert state["outer_step"] == 6 and len(state["problems"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["merged", "pes"])
def test_resume_after_a_kill(tmp_path: Path, estimator: str) -> None:
    """A meta-training process killed (SIGKILL) at an arbitrary point resumes from its last
    checkpoint and ends with the theta of an uninterrupted run."""
    out = tmp_path / "killed"
    settings = {**QUICK, "parallel": "loop", "checkpoint_every": 2, "estimator": estimator}
    code = (
        "from harness.meta import meta_train\n"
        f"meta_train(**{settings!r}, outer_steps=10_000, out={str(out)!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snapshots = list(out.glob("lopt_step*.safetensors"))
            if len(snapshots) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the meta-training process wrote no checkpoints")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    reached = load_trainer_state(out / "trainer_state.pt")["outer_step"]
    target = reached + 3
    resumed = meta_train(**settings, outer_steps=target, out=str(out))
    whole = meta_train(**settings, outer_steps=target, out=str(tmp_path / "whole"))
    assert torch.equal(load_lopt_checkpoint(resumed).theta, load_lopt_checkpoint(whole).theta)


def test_resume_refuses_a_different_run_and_resume_false_restarts(tmp_path: Path) -> None:
    """resume=true with a different identity (here the seed) is a one-line UsageError; resume=
    false starts again, removing the old snapshots."""
    out = str(tmp_path / "m")
    meta_train(**QUICK, parallel="loop", outer_steps=2, checkpoint_every=1, out=out)
    with pytest.raises(UsageError, match=r"holds a different meta-training run.*seed") as info:
        meta_train(**QUICK, parallel="loop", outer_steps=3, seed=1, out=out)
    assert "\n" not in str(info.value)
    meta_train(**QUICK, parallel="loop", outer_steps=1, seed=1, resume=False, out=out)
    snapshots = sorted(p.name for p in Path(out).glob("lopt_step*"))
    assert snapshots == ["lopt_step000001.safetensors"]


def test_init_from_continues_a_checkpoint_and_refuses_another_learner(tmp_path: Path) -> None:
    """init_from starts theta at a checkpoint's (a curriculum: one estimator after another);
    a checkpoint of another learner is a one-line UsageError, before anything is written."""
    first = meta_train(
        **QUICK, parallel="loop", estimator="es", outer_steps=2, out=str(tmp_path / "a")
    )
    theta = load_lopt_checkpoint(first).theta
    cfg = coerce_config(
        {**QUICK, "parallel": "loop", "outer_steps": 1, "out": str(tmp_path / "b")},
        init_from=str(first),
    )
    assert torch.equal(build_trainer(cfg).theta, theta)
    assert (
        resolve_meta(cfg).identity["init_from"] == str(first)
        and "init_from" not in resolve_meta(coerce_config(QUICK)).identity
    )
    path = meta_train(cfg)
    assert not torch.equal(load_lopt_checkpoint(path).theta, theta)  # it trained on from there
    with pytest.raises(UsageError, match=r"holds a mlp learner, hidden_sizes=\[32, 32\]") as info:
        meta_train(
            **QUICK,
            parallel="loop",
            learner_cfg={"hidden_sizes": [8]},
            init_from=str(first),
            out=str(tmp_path / "c"),
        )
    assert "\n" not in str(info.value) and not (tmp_path / "c").exists()


def test_meta_train_builds_its_task_once(tmp_path: Path, monkeypatch) -> None:
    """The task meta_train builds when it resolves the configuration is the one the trainer
    trains: one build per run."""
    import harness.meta.command as command
    import harness.registry as registry

    built = []

    def counting(*args, **kwargs):
        built.append(args[0])
        return create_task(*args, **kwargs)

    monkeypatch.setattr(registry, "create_task", counting)  # what harness.resolve builds with
    monkeypatch.setattr(command, "create_task", counting)
    meta_train(**QUICK, parallel="loop", outer_steps=1, out=str(tmp_path / "once"))
    assert built == ["quadratic"]


def test_max_seconds_stops_with_a_checkpoint(tmp_path: Path) -> None:
    """max_seconds ends this call of meta-training after the first outer step that reaches it,
    saved; the next call continues the run."""
    path = meta_train(
        **QUICK, parallel="loop", outer_steps=1000, max_seconds=1e-6, out=str(tmp_path / "t")
    )
    assert load_lopt_checkpoint(path).meta_training["outer_step"] == 1
    assert load_trainer_state(tmp_path / "t" / "trainer_state.pt")["outer_step"] == 1
    # max_seconds is per call: rerunning the same command continues for another chunk
    meta_train(
        **QUICK, parallel="loop", outer_steps=1000, max_seconds=1e-6, out=str(tmp_path / "t")
    )
    assert load_trainer_state(tmp_path / "t" / "trainer_state.pt")["outer_step"] == 2


# -- memory, schedules, resets ---------------------------------------------------------------------
def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


@pytest.mark.slow
def test_memory_stays_flat_over_50_truncations(tmp_path: Path) -> None:
    """The number of live tensors after each of 50 outer steps (each a truncation of every
    problem, with resets) does not grow: no autograd history survives a truncation."""
    cfg = coerce_config({**QUICK, "horizon": 20}, parallel="loop", out=str(tmp_path))
    trainer = build_trainer(cfg)
    counts = []
    for step in range(1, 51):
        trainer.step()
        if step % 5 == 0:
            counts.append(live_tensors())
    assert max(counts[1:]) <= counts[0] + 2, counts
    assert (
        trainer.last["resets"] >= 0 and sum(row[3] for row in trainer.log if row[2] == "resets") > 4
    )


def test_staggered_starts_caps_and_resets() -> None:
    """Problem i of B starts at step i * horizon / B with fresh parameters; unrolls are capped by
    the steps left; a problem reaching the horizon restarts at t = 0 with a new init."""
    task = create_task("quadratic")
    problems = InnerProblems(
        task,
        MLPLearner.of(),
        num_problems=4,
        horizon=40,
        outer_batches=1,
        objective="valid",
        seed=0,
    )
    states = [problems.initial_state(i) for i in range(4)]
    assert [s.step for s in states] == [0, 10, 20, 30]
    assert problems.length_cap(states[3]) == 10
    theta = init_theta(LOptArchitecture())
    _, final = problems.unroll(theta, states[3], problems.data(3, states[3], 10), grad_mode="none")
    assert final.step == 40
    state, reset = problems.advance(3, final)
    assert reset and state.step == 0 and state.instance == 1
    assert not torch.equal(state.params[0], states[3].params[0])
    same, reset = problems.advance(0, states[0])
    assert not reset and same is states[0]


def test_schedules() -> None:
    """Constant: always its length. Linear: from min to max over ramp_steps, each length within
    U(0.8, 1.2) of the line, deterministic per (outer step, problem)."""
    assert ConstantSchedule(7).length(123, 3) == 7
    linear = LinearSchedule(min_unroll=10, max_unroll=50, ramp_steps=100, jitter=0.2, seed=0)
    for outer_step in (0, 50, 100, 500):
        line = 10 + 40 * min(1.0, outer_step / 100)
        lengths = [linear.length(outer_step, p) for p in range(64)]
        assert all(0.8 * line - 1 <= n <= 1.2 * line + 1 for n in lengths)
        assert len(set(lengths)) > 1
        assert lengths == [linear.length(outer_step, p) for p in range(64)]


# -- the log and the estimators end to end ---------------------------------------------------------
@pytest.mark.parametrize("estimator", ["merged", "rp", "es", "pes"])
def test_every_estimator_runs_and_logs_a_tidy_table(tmp_path: Path, estimator: str) -> None:
    """Each estimator trains (theta changes, stays finite); the log has one row per metric per
    outer step with the run's provenance; ES alone logs an ES weight of 1, rp alone of 0."""
    out = tmp_path / estimator
    settings = {**QUICK, "schedule": "linear", "min_unroll": 2, "max_unroll": 8}
    meta_train(
        settings,
        parallel="loop",
        estimator=estimator,
        objective="valid",
        outer_steps=3,
        out=str(out),
    )
    log = pd.read_csv(out / "meta_log.csv")
    assert list(log.columns[: len(LOG_COLUMNS)]) == list(LOG_COLUMNS)
    assert {"git_commit", "torch_version", "device", "threads"} <= set(log.columns)
    slots = ESTIMATORS[estimator].slots
    expected = {*METRICS, *(f"var_{s}" for s in slots), *(f"dropped_{s}" for s in slots)}
    assert len(log) == 3 * len(expected) and set(log.metric) == expected
    wide = log.pivot(index="outer_step", columns="metric", values="value")
    assert (wide.outer_loss > 0).all() and (wide.unroll_length >= 1).all()
    if estimator in ("es", "pes"):
        assert (wide.es_weight == 1).all() and "var_rp" not in wide
    if estimator == "rp":
        assert (wide.es_weight == 0).all()
    theta = load_lopt_checkpoint(out / "lopt.pt").theta
    assert torch.isfinite(theta).all()
    assert not torch.equal(theta, init_theta(LOptArchitecture(), theta_seed(0)))


def theta_seed(seed: int) -> int:
    from harness.meta.truncation import STREAM_THETA, derive_seed

    return derive_seed(seed, STREAM_THETA)


def test_exploding_unrolls_are_dropped_and_never_reach_theta(tmp_path: Path) -> None:
    """With an absurd perturbation (sigma = 1e4) the unrolls blow up: the non-finite samples are
    dropped and counted, the blown-up problems are reset, theta stays finite."""
    cfg = coerce_config(**QUICK, parallel="loop", sigma=1e4, out=str(tmp_path))
    trainer = build_trainer(cfg)
    metrics = trainer.step()
    assert metrics["dropped_rp"] + metrics["dropped_es"] > 0
    assert torch.isfinite(trainer.theta).all()
    assert all(state.is_finite() for state in trainer.states.values())


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"estimator": "nope"}, "estimator must be one of merged, rp, es, pes"),
        ({"loss": "median"}, "loss must be one of mean, log, log_mean, final"),
        ({"learner": "nope"}, "unknown learner 'nope'"),
        ({"learner_cfg": {"hidden": 3}}, "unknown architecture field 'hidden'"),
        ({"outer_data": "inner", "objective": "valid"}, "outer_data=inner reuses the training"),
        ({"estimator": "pes", "parallel": "vmap"}, "estimator=pes runs loop or processes"),
        ({"outer_every": 0}, "outer_every must be an integer >= 1"),
        ({"outer_from": -1}, "outer_from must be an integer >= 0"),
        ({"outer_from": 40, "horizon": 40}, "outer_from (40) must be below the horizon (40)"),
        ({"objective": "test"}, "objective must be one of train, valid"),
        ({"problems": 1}, "problems must be an integer >= 2"),
        ({"workers": 9, "problems": 8}, "workers (9) must be <= problems (8)"),
        ({"min_unroll": 60, "max_unroll": 50}, "min_unroll (60) must be <= max_unroll (50)"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"beta1": 1.0}, "beta1 must be >= 0 and < 1"),
        ({"hidden_sizes": [32, 0]}, "hidden_sizes must be positive integers"),
        ({"learning_rate": 0.1}, "meta-train takes no option 'learning_rate'"),
        ({"outer_steps": "many"}, "outer_steps must be an integer"),
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"task_cfg": {"dimension": 3}}, "task quadratic takes no setting 'dimension'"),
        ({"task_cfg": {"dim": 0}}, "quadratic: need an integer dim > 0"),
        ({"device": "gpu"}, "invalid device"),
    ],
)
def test_bad_configurations_are_one_line_usage_errors(
    tmp_path: Path, overrides: dict, message: str
) -> None:
    settings = {**QUICK, "out": str(tmp_path / "x"), **overrides}
    with pytest.raises(UsageError) as info:
        meta_train(**settings)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()  # nothing written


def test_config_accepts_a_hydra_task_node_and_dataclass_defaults() -> None:
    """A Hydra task group node becomes task + task_cfg; every field has a default; the
    dataclass is a valid OmegaConf structured config."""
    from omegaconf import OmegaConf

    cfg = coerce_config({"task": {"name": "quadratic", "dim": 3}, "outer_steps": 5})
    assert cfg.task == "quadratic" and cfg.task_cfg == {"dim": 3} and cfg.outer_steps == 5
    node = OmegaConf.structured(MetaTrainConfig)
    assert node.estimator == "merged" and node.horizon is None and node.learner == "mlp"
    legacy = coerce_config({"hidden_sizes": [8], "second_moments": True})
    assert legacy.learner_cfg == {"hidden_sizes": [8], "second_moments": True}
    again = coerce_config(OmegaConf.merge(node, {"task": "digits_mlp", "problems": 4}))
    assert again.task == "digits_mlp" and again.problems == 4
    assert math.isclose(MetaTrainConfig().sigma, 0.01)
