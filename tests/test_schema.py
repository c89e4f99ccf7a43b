"""The one tidy schema and the one provenance record (harness.results.schema): every writer's
columns come from it (bench rows, meta-training logs, family logs, pathology tables), each row
says its source, the columns of schema 2 are kept as they were, committed files of schemas 1
and 2 still read, and checkpoints and trainer states carry the same provenance record."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import harness.results.schema as schema
from harness.results.io import read_results
from harness.results.schema import (
    BENCH,
    FAMILY_META,
    META,
    PATHOLOGY,
    PROVENANCE_COLUMNS,
    SCHEMAS,
    SHARED_COLUMNS,
    SOURCES,
    provenance,
)

ROOT = Path(__file__).resolve().parents[1]

#: the columns each table had in schema 2 (the headers written before ``source`` came)
SCHEMA_2 = {
    "results": "run_id,suite,task,task_cfg,optimizer,hparams,seed,step,wall_time_s,split,metric,"
    "value,status,budget_steps,tags,harness_version,schema_version,git_commit,torch_version,"
    "device,threads",
    "meta-training log": "run_id,task,learner,estimator,objective,loss,seed,outer_step,"
    "wall_time_s,metric,value,harness_version,schema_version,git_commit,torch_version,device,"
    "threads",
    "family meta-training log": "run_id,family,learner,estimator,seed,outer_step,wall_time_s,"
    "metric,value,harness_version,schema_version,git_commit,torch_version,device,threads",
    "pathology study": "study,task,optimizer,variant,unroll_length,x,step,seconds,metric,value,"
    "seed,harness_version,schema_version,git_commit,torch_version,device,threads,study_seconds",
}


def test_every_table_has_its_own_columns_then_the_shared_tail() -> None:
    assert [s.source for s in SCHEMAS] == ["bench", "meta", "meta", "pathology"]
    assert set(SOURCES) == {s.source for s in SCHEMAS}
    for table in SCHEMAS:
        assert table.columns[-len(SHARED_COLUMNS) :] == SHARED_COLUMNS
        assert {"metric", "value"} <= set(table.own)
        assert len(set(table.columns)) == len(table.columns)
        # schema 3 = schema 2's columns (same names; pathology's study_seconds moved before
        # the provenance) and source
        assert set(table.columns) == set(SCHEMA_2[table.name].split(",")) | {"source"}
    assert BENCH.columns == schema.COLUMNS
    assert (*PROVENANCE_COLUMNS, "source") == SHARED_COLUMNS


def test_a_writer_that_leaves_its_schema_is_refused() -> None:
    rows = pd.DataFrame({"metric": ["loss"], "value": [1.0]})
    with pytest.raises(ValueError, match=r"lack \['run_id'"):
        META.frame(rows)
    full = pd.DataFrame([dict.fromkeys(PATHOLOGY.own, 0)]).assign(extra=1)
    with pytest.raises(ValueError, match=r"unknown columns \['extra'\]"):
        PATHOLOGY.frame(full)


def test_bench_rows_come_from_the_schema() -> None:
    from harness.registry import create_optimizer, create_task
    from harness.runner import run

    result = run(create_task("quadratic"), create_optimizer("adam"), steps=4, seed=0)
    frame = result.frame()
    assert tuple(frame.columns) == BENCH.columns
    assert set(frame["source"]) == {"bench"}
    assert set(frame["schema_version"]) == {schema.SCHEMA_VERSION}


@pytest.mark.usefixtures("one_thread")
def test_meta_training_logs_come_from_the_schema(tmp_path) -> None:
    from harness.meta import meta_train
    from harness.meta.trainer import LOG_COLUMNS

    settings = {
        "task": "quadratic",
        "problems": 2,
        "horizon": 20,
        "outer_batches": 1,
        "schedule": "constant",
        "unroll_length": 5,
        "progress": False,
        "threads": 1,
        "eval_every": 0,
        "parallel": "loop",
        "outer_steps": 1,
    }
    meta_train({**settings, "out": str(tmp_path)})
    log = pd.read_csv(tmp_path / "meta_log.csv")
    assert META.own == LOG_COLUMNS and tuple(log.columns) == META.columns
    assert set(log["source"]) == {"meta"}


def test_family_logs_and_pathology_tables_come_from_the_schema() -> None:
    from harness.meta.family.trainer import LOG_COLUMNS, FamilyTrainer
    from harness.pathology.common import COLUMNS, row, tidy_frame
    from harness.settings.family import coerce_family_config

    cfg = coerce_family_config(
        {
            "family": "mlp_mix",
            "learner_cfg": {"compile": False},
            "out": "unused",
            "pairs": 4,
            "arch_groups": 2,
            "heldout_tasks": 2,
        }
    )
    trainer = FamilyTrainer(cfg)
    trainer.log = [[1, 0.5, "outer_loss", 0.25]]
    log = trainer.log_frame()
    assert FAMILY_META.own == LOG_COLUMNS and tuple(log.columns) == FAMILY_META.columns
    assert log.iloc[0][["metric", "value", "source"]].tolist() == ["outer_loss", 0.25, "meta"]
    measured = row(study="variance", task="quadratic", metric="estimate", value=2.0, seed=0)
    table = tidy_frame([measured], study_seconds=1.5)
    assert (*COLUMNS, "study_seconds") == PATHOLOGY.own
    assert tuple(table.columns) == PATHOLOGY.columns
    assert table.iloc[0][["value", "study_seconds", "source"]].tolist() == [2.0, 1.5, "pathology"]


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("results/small/results.csv", 1),
        ("results/paper/tuning/grid_mnist5k_cnn16_sgd_tuned.csv", 2),
    ],
)
def test_committed_results_of_older_schemas_still_read(path: str, version: int) -> None:
    """Files written before ``source`` read as bench rows, every other value as in the file."""
    file = ROOT / path
    raw = pd.read_csv(file)
    assert set(raw["schema_version"]) == {version} and "source" not in raw
    frame = read_results(file)
    assert set(frame["source"]) == {"bench"}
    assert set(BENCH.columns) <= set(frame.columns)
    for column in raw.columns:
        pd.testing.assert_series_equal(frame[column], raw[column])


def test_checkpoints_and_trainer_states_carry_the_one_provenance_record(tmp_path) -> None:
    import optimizers.checkpoint as checkpoint
    from harness.meta.checkpoint import load_trainer_state, save_trainer_state
    from optimizers.checkpoint import load_payload, save_lopt_checkpoint
    from optimizers.learned import MLPLearner

    assert checkpoint.provenance is schema.provenance  # one function, not a second one
    learner = MLPLearner.of()
    theta = learner.init_theta(0)
    path = save_lopt_checkpoint(tmp_path / "lopt.safetensors", theta, learner, {"outer_step": 1})
    saved = load_payload(path, checkpoint.LOPT_FORMAT, "checkpoint", "")
    record = provenance("cpu")
    assert {key: saved[key] for key in record} == record
    assert saved["created"].endswith("+00:00")
    state = load_trainer_state(save_trainer_state(tmp_path / "state.pt", {"outer_step": 1}))
    assert {key: state[key] for key in record} == record and "created" in state
    assert json.dumps(record)  # plain data: it goes into the safetensors metadata


def test_checkpoints_written_with_the_old_record_still_load() -> None:
    """The shipped checkpoints were written with the older record (commit, versions, created)."""
    from optimizers.checkpoint import load_lopt_checkpoint, shipped_names

    loaded = load_lopt_checkpoint(shipped_names()[0])
    assert loaded.git_commit and loaded.created
    assert torch.isfinite(loaded.theta).all()
