"""``lopt meta-train family=...`` (harness.meta.family): a run in two chunks equals one run,
the log and the state files, the progress line, and bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from family_runs import TINY_FAMILY_RUN

from harness.cli import main
from harness.errors import UsageError
from harness.meta.checkpoint import load_trainer_state, save_trainer_state
from harness.meta.family.command import meta_train_family
from harness.meta.family.report import CURVES_FILE, heldout_curves
from harness.meta.family.trainer import (
    BEST_FILE,
    INNER_FILE,
    LOG_FILE,
    LOPT_FILE,
    STATE_FILE,
    FamilyTrainer,
)
from harness.settings.family import coerce_family_config
from optimizers.checkpoint import load_lopt_checkpoint

# a tiny run: 4 pairs in 2 architecture groups, horizons of 20-40 steps in truncations of 10,
# nominal_mlp eager (no compile in tests), 4 held-out tasks
TINY = {
    **{k: v for k, v in TINY_FAMILY_RUN.items() if k not in ("progress", "outer_steps")},
    "heldout_tasks": 4,
}


def run(out, **overrides) -> None:
    meta_train_family({**TINY, "out": str(out), **overrides})


def numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """The log without what depends on the clock."""
    timed = frame["metric"].isin(["seconds", "cpu_seconds"])
    return frame.loc[~timed, ["outer_step", "metric", "value"]].reset_index(drop=True)


def test_a_run_split_in_two_chunks_equals_one_run(tmp_path):
    run(tmp_path / "one", outer_steps=4)
    run(tmp_path / "two", outer_steps=2)
    first = load_trainer_state(tmp_path / "two" / STATE_FILE)
    assert first["outer_step"] == 2
    run(tmp_path / "two", outer_steps=4)  # the same command with a later end: the next chunk
    one = load_trainer_state(tmp_path / "one" / STATE_FILE)
    two = load_trainer_state(tmp_path / "two" / STATE_FILE)
    assert torch.equal(one["theta"], two["theta"])
    assert not torch.equal(one["theta"], first["theta"])  # theta moved in the second chunk
    assert torch.equal(one["adam"]["m"], two["adam"]["m"])
    log_one = pd.read_csv(tmp_path / "one" / LOG_FILE)
    log_two = pd.read_csv(tmp_path / "two" / LOG_FILE)
    pd.testing.assert_frame_equal(numbers(log_one), numbers(log_two))
    inner_one = load_trainer_state(tmp_path / "one" / INNER_FILE)["pairs"]
    inner_two = load_trainer_state(tmp_path / "two" / INNER_FILE)["pairs"]
    for a, b in zip(inner_one, inner_two, strict=True):
        assert a["step"] == b["step"] and torch.equal(a["w_plus"], b["w_plus"])
    metrics = set(log_one["metric"])
    for name in ("split_cosine", "snr", "control_split_cosine", "control_snr", "heldout_loss"):
        assert name in metrics
    assert (tmp_path / "one" / LOPT_FILE).is_file()


@pytest.mark.parametrize(
    ("objective", "metric"), [("train", "heldout_loss"), ("valid", "heldout_final_valid")]
)
def test_best_snapshot_is_theta_at_the_lowest_judgement(tmp_path, objective, metric):
    run(tmp_path, outer_steps=4, objective=objective, lr=0.1)
    log = pd.read_csv(tmp_path / LOG_FILE)
    judged = log[log["metric"] == metric].reset_index(drop=True)
    best_step = int(judged.loc[judged["value"].idxmin(), "outer_step"])
    assert best_step > 0  # theta moved, and the judge saw it improve
    loaded = load_lopt_checkpoint(tmp_path / BEST_FILE)
    record = loaded.meta_training
    assert record["outer_step"] == best_step and record["selected_on"] == metric
    assert record[metric] == pytest.approx(judged["value"].min())
    state = load_trainer_state(tmp_path / STATE_FILE)  # this tiny run improves at every judgement
    assert state["outer_step"] == best_step and torch.equal(loaded.theta, state["theta"])
    # a later judgement that is not lower leaves the snapshot alone: make the saved best
    # unbeatable, then continue the run
    state["best"] = {metric: -1e9, "outer_step": 1.0}
    save_trainer_state(tmp_path / STATE_FILE, state, "cpu")
    before = (tmp_path / BEST_FILE).read_bytes()
    run(tmp_path, outer_steps=6, objective=objective, lr=0.1)
    assert (tmp_path / BEST_FILE).read_bytes() == before
    assert load_trainer_state(tmp_path / STATE_FILE)["best"][metric] == -1e9
    # a state saved before best.safetensors existed: its log's lowest judgement counts
    state = load_trainer_state(tmp_path / STATE_FILE)
    del state["best"]
    state["log"].append([6, 0.0, metric, -1e8])
    save_trainer_state(tmp_path / STATE_FILE, state, "cpu")
    run(tmp_path, outer_steps=8, objective=objective, lr=0.1)
    assert (tmp_path / BEST_FILE).read_bytes() == before
    assert load_trainer_state(tmp_path / STATE_FILE)["best"] == {metric: -1e8, "outer_step": 6.0}


def test_the_command_draws_the_runs_curves_after_each_chunk(tmp_path):
    out = tmp_path / "run"
    args = [f"{k}={v}" for k, v in TINY.items() if k != "learner_cfg"]
    args += ["learner_cfg.compile=false", "outer_steps=4", f"out={out}"]
    assert main(["meta-train", *args]) == 0
    assert (out / CURVES_FILE).stat().st_size > 10_000
    curves = heldout_curves(pd.read_csv(out / LOG_FILE))
    assert list(curves["outer_step"]) == [0, 2, 4]  # eval_every=2
    assert (curves["cpu_hours"].diff().dropna() > 0).all()
    assert list(curves["problem_steps"]) == [0, 2 * 2 * 10 * 4, 4 * 2 * 10 * 4]
    assert (curves["heldout_loss_se"] > 0).all() and curves["heldout_final_valid"].notna().all()


def test_without_the_inner_state_a_run_continues_from_its_small_state(tmp_path):
    run(tmp_path, outer_steps=2)
    (tmp_path / INNER_FILE).unlink()
    stream = io.StringIO()
    cfg = coerce_family_config({**TINY, "out": str(tmp_path), "outer_steps": 3})
    from harness.meta.family.trainer import run_family_training

    run_family_training(cfg, log_stream=stream)
    assert "the pairs start afresh" in stream.getvalue()
    assert load_trainer_state(tmp_path / STATE_FILE)["outer_step"] == 3


def test_the_progress_line_carries_the_meters_and_calls_noise_noise():
    cfg = coerce_family_config({**TINY, "out": "unused", "outer_steps": 1})
    trainer = FamilyTrainer(cfg)
    trainer.meter_rows = [
        {"split_cosine": 0.02, "snr": 0.9, "control_split_cosine": 0.0, "control_snr": 0.8}
    ]
    trainer.last = {"outer_loss": -1.0}
    line = trainer.progress_line()
    assert "median cos=0.020 (control 0.000) snr=0.900 (control 0.800)" in line
    assert "THE ESTIMATE IS NOISE" in line
    trainer.meter_rows[0]["split_cosine"] = 0.5
    assert "NOISE" not in trainer.progress_line()


def test_a_different_run_in_the_same_folder_is_refused(tmp_path):
    run(tmp_path, outer_steps=1, eval_every=0)
    with pytest.raises(UsageError, match="holds a different family meta-training run"):
        run(tmp_path, outer_steps=2, eval_every=0, sigma=0.02)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["family=nope"], "family must be one of"),
        (["family=mlp_mix", "pairs=1"], "pairs must be an integer >= 2"),
        (["family=mlp_mix", "estimator=rp"], "estimator must be one of pes, tes, merged"),
        (["family=mlp_mix", "learner=mlp"], "learner mlp has no batched_init"),
        (["family=mlp_mix", "min_horizon=30", "truncation=50"], "must be >= truncation"),
        (["family=mlp_mix", "bogus=1"], "takes no option 'bogus'"),
        (["family=mlp_mix,conv_mix"], "is a comma list"),
        (["family=mlp_mix", "task_cfg.x=1"], "only learner_cfg.NAME=VALUE"),
        (["family=mlp_mix", "sigma=-1"], "sigma must be a finite number > 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["meta-train", *args, f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_two_torchrun_workers_train_like_one_process(tmp_path):
    """``parallel=processes`` (2 gloo ranks, each owning every other pair and half the
    held-out set) gives the single process's theta and meters (up to the order of float
    sums: the ranks batch fewer rows together)."""
    run(tmp_path / "single", outer_steps=2)
    run(tmp_path / "processes", outer_steps=2, parallel="processes", workers=2)
    single = load_trainer_state(tmp_path / "single" / STATE_FILE)
    processes = load_trainer_state(tmp_path / "processes" / STATE_FILE)
    torch.testing.assert_close(processes["theta"], single["theta"], rtol=0, atol=1e-5)
    a = numbers(pd.read_csv(tmp_path / "single" / LOG_FILE))
    b = numbers(pd.read_csv(tmp_path / "processes" / LOG_FILE))
    assert list(a["metric"]) == list(b["metric"])
    torch.testing.assert_close(
        torch.tensor(b["value"].to_numpy()),
        torch.tensor(a["value"].to_numpy()),
        rtol=1e-3,
        atol=1e-4,
    )
