"""The character-level language-model workload: its frozen corpus and its task."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from harness.errors import DatasetUnavailableError
from harness.registry import create_task, list_tasks
from tasks.data.charlm import CORPUS_SHA256, FOLDER, load_charlm_corpus

SMALL = {"width": 16, "heads": 2, "layers": 1, "context": 16, "batch_size": 4}


def test_the_committed_corpus_has_its_checksum_and_its_manifest():
    text = gzip.decompress((FOLDER / "corpus.txt.gz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == CORPUS_SHA256
    manifest = json.loads((FOLDER / "corpus.json").read_text())
    assert manifest["sha256"] == CORPUS_SHA256
    assert manifest["chars"] == len(text) == sum(f["chars"] for f in manifest["files"])
    assert (FOLDER / "LICENSE-PSF.txt").read_text().startswith("A. HISTORY OF THE SOFTWARE")


def test_splits_are_by_file_and_disjoint():
    splits, vocabulary = load_charlm_corpus()
    manifest = json.loads((FOLDER / "corpus.json").read_text())
    by_split: dict[str, set[str]] = {}
    for entry in manifest["files"]:
        by_split.setdefault(entry["split"], set()).add(entry["name"])
    assert set(by_split) == {"train", "valid", "test"}
    assert not (by_split["train"] & by_split["valid"] or by_split["train"] & by_split["test"])
    assert {k: len(v) for k, v in splits.items()} == manifest["split_chars"]
    assert len(vocabulary) == 96 and set("".join(splits.values())) == set(vocabulary)


def test_a_corrupted_corpus_is_refused(tmp_path: Path):
    shutil.copytree(FOLDER, tmp_path / "charlm")
    path = tmp_path / "charlm" / "corpus.txt.gz"
    text = bytearray(gzip.decompress(path.read_bytes()))
    text[1000] = ord("#") if text[1000] != ord("#") else ord("%")
    path.write_bytes(gzip.compress(bytes(text)))
    with pytest.raises(DatasetUnavailableError, match="unexpected content"):
        load_charlm_corpus.__wrapped__(tmp_path / "charlm")


def test_the_task_is_listed_and_its_batches_and_loss_have_the_contracts_shapes():
    assert "charlm_transformer" in list_tasks()
    task = create_task("charlm_transformer", **SMALL)
    params = task.init_params(0)
    assert all(torch.equal(a, b) for a, b in zip(params, task.init_params(0), strict=True))
    inputs, targets = next(task.batches("train", seed=0))
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.long
    again = next(task.batches("train", seed=0))
    assert torch.equal(again[0], inputs)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the next characters
    loss = task.loss(params, (inputs, targets))
    assert loss.shape == () and abs(float(loss) - math.log(96)) < 0.5  # near uniform at init


def test_attention_is_causal():
    task = create_task("charlm_transformer", **SMALL)
    params = task.init_params(1)
    ids = next(task.batches("valid", seed=0))[0]
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 96
    before, after = task.logits(params, ids), task.logits(params, changed)
    assert torch.allclose(before[:, :10], after[:, :10], atol=1e-6)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_evaluation_covers_the_whole_split_in_non_overlapping_windows():
    task = create_task("charlm_transformer", **SMALL)
    windows = task.eval_windows("valid")
    size = task.split_size("valid")
    assert windows.shape == ((size - 1) // 16, 17)
    assert torch.equal(windows[1:, 0], windows[:-1, -1])  # each window starts where one ended
    metrics = task.evaluate(task.init_params(0), "valid")
    assert set(metrics) == {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0


def test_a_short_run_learns():
    from harness import run

    result = run(
        "charlm_transformer",
        "adam",
        task_cfg=SMALL,
        hparams={"lr": 0.01},
        steps=60,
        eval_every=60,
        eval_splits=("valid",),
    )
    assert result.final("valid") < math.log(96) - 1.0


def test_bad_settings_are_one_line_usage_errors():
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="multiple of heads"):
        create_task("charlm_transformer", width=10, heads=4)
    with pytest.raises(UsageError, match="context must be a positive integer"):
        create_task("charlm_transformer", context=0)


def test_every_optimizer_of_the_lm_suite_runs_on_it():
    """The `lm` suite runs every shipped learned optimizer unchanged on the transformer."""
    from omegaconf import OmegaConf

    from harness import run
    from harness.settings.suite import suite_entries

    suite = OmegaConf.load(Path(__file__).resolve().parent.parent / "harness/conf/suite/lm.yaml")
    names = sorted({entry.optimizer for entry in suite_entries(suite) if not entry.tuned})
    assert len(names) == 10
    for name in names:
        result = run(
            "charlm_transformer",
            name,
            task_cfg=SMALL,
            steps=3,
            eval_every=3,
            eval_splits=("valid",),
            warmup_steps=0,
        )
        assert result.status == "completed" and math.isfinite(result.final("valid")), name
