"""The built-in tasks: determinism, differentiable losses, whole-split evaluation, disjoint and
stratified splits, and configuration errors. (fmnist_cnn16 is in test_fashion_mnist.py.)"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.errors import UsageError
from harness.registry import create_task, list_tasks
from tasks.base import SPLITS, Task
from tasks.classification import ClassificationTask, stratified_split
from tasks.data.mnist5k import load_mnist5k

# The tasks' configuration in these tests; quadratic gets noise so that its batches are random.
CONFIGS: dict[str, dict[str, Any]] = {
    "quadratic": {"noise": 0.5},
    "charlm_transformer": {"width": 16, "heads": 2, "layers": 1},  # a fast model, same data
}
TASKS = [name for name in list_tasks() if "fmnist" not in name]  # those need the data
CLASSIFICATION_SIZES = {"mnist5k_cnn16": (3500, 500, 1000), "digits_mlp": (1097, 200, 500)}


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    """Every task under test, created once (mnist5k takes about 2 s)."""
    return {name: create_task(name, **CONFIGS.get(name, {})) for name in TASKS}


def test_builtin_tasks_are_registered() -> None:
    """The tasks this file covers are all registered (a removed task fails here, not silently)."""
    assert {"digits_mlp", "mnist5k_cnn16", "quadratic"} <= set(TASKS)
    assert "fmnist_cnn16" in list_tasks()


# -- the contract, for every task -------------------------------------------------------------
@pytest.mark.parametrize("name", TASKS)
def test_init_params_deterministic_per_seed(tasks: dict[str, Task], name: str) -> None:
    """init_params(seed) is a function of the seed: equal for equal seeds, different otherwise,
    on the task's device and not requiring grad."""
    task = tasks[name]
    a, b, c = task.init_params(0), task.init_params(0), task.init_params(1)
    assert isinstance(a, tuple) and len(a) > 0
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not torch.equal(x, z) for x, z in zip(a, c, strict=True))
    for p in a:
        assert p.device == task.device and p.dtype == torch.float32 and not p.requires_grad


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_batches_deterministic_per_seed(tasks: dict[str, Task], name: str, split: str) -> None:
    """batches(split, seed) yields the same sequence for the same seed and a different one for
    another seed, with batch_size examples on the task's device."""
    task = tasks[name]

    def first(seed: int, n: int = 3) -> list[tuple[torch.Tensor, ...]]:
        return list(itertools.islice(task.batches(split, seed), n))

    a, b, c = first(0), first(0), first(1)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert any(
        not torch.equal(u, v) for x, z in zip(a, c, strict=True) for u, v in zip(x, z, strict=True)
    )
    for batch in a:
        assert all(t.device == task.device for t in batch)
        assert all(t.shape[0] == task.batch_size for t in batch)


@pytest.mark.parametrize("name", TASKS)
def test_loss_is_differentiable_scalar(tasks: dict[str, Task], name: str) -> None:
    """loss(params, batch) is a finite scalar whose gradient reaches every parameter tensor."""
    task = tasks[name]
    params = tuple(p.requires_grad_(True) for p in task.init_params(0))
    loss = task.loss(params, next(task.batches("train", 0)))
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        assert g.shape == p.shape and torch.isfinite(g).all()
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", TASKS)
def test_evaluate_returns_the_metrics(tasks: dict[str, Task], name: str) -> None:
    """evaluate returns exactly the task's metrics (loss first) as finite floats, for each split,
    and refuses an unknown split with a UsageError."""
    task = tasks[name]
    params = task.init_params(0)
    assert task.metrics[0] == "loss"
    for split in SPLITS:
        metrics = task.evaluate(params, split)
        assert list(metrics) == list(task.metrics)
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    with pytest.raises(UsageError, match="unknown split 'validation'"):
        task.evaluate(params, "validation")
    with pytest.raises(UsageError, match="unknown split"):
        next(task.batches("dev", 0))


# -- classification tasks ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLASSIFICATION_SIZES))
@pytest.mark.parametrize("split", SPLITS)
def test_classification_evaluate_covers_whole_split(
    tasks: dict[str, Task], name: str, split: str
) -> None:
    """evaluate's loss and accuracy are those of the whole split (not of a minibatch)."""
    task = tasks[name]
    assert isinstance(task, ClassificationTask)
    params = task.init_params(3)
    inputs, labels = task._data[split]
    with torch.no_grad():
        logits = task.logits(params, inputs)
        loss = F.cross_entropy(logits.double(), labels).item()
        accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
    metrics = task.evaluate(params, split)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION_SIZES))
def test_classification_splits_sizes_disjoint_stratified(tasks: dict[str, Task], name: str) -> None:
    """The splits have the documented sizes, share no example (compared row by row), and each
    has the class proportions of the whole dataset up to rounding."""
    task = tasks[name]
    assert isinstance(task, ClassificationTask)
    sizes = CLASSIFICATION_SIZES[name]
    assert tuple(task.split_size(s) for s in SPLITS) == sizes

    rows = {split: {x.numpy().tobytes() for x in task._data[split][0].cpu()} for split in SPLITS}
    for split, size in zip(SPLITS, sizes, strict=True):
        assert len(rows[split]) == size  # no duplicate inside a split either
    for a, b in itertools.combinations(SPLITS, 2):
        assert rows[a].isdisjoint(rows[b]), f"{name}: {a} and {b} share examples"

    all_labels = torch.cat([task._data[s][1] for s in SPLITS]).cpu().numpy()
    proportions = np.bincount(all_labels, minlength=10) / len(all_labels)
    for split, size in zip(SPLITS, sizes, strict=True):
        counts = np.bincount(task._data[split][1].cpu().numpy(), minlength=10)
        assert np.abs(counts - size * proportions).max() < 2, (split, counts)


def test_mnist5k_split_follows_stratified_split_indices(tasks: dict[str, Task]) -> None:
    """mnist5k_cnn16's splits are the stratified_split of the 5,000 images: disjoint index sets
    of 3500/500/1000 with exactly 350/50/100 images per class, and the task's labels match."""
    _, labels = load_mnist5k()
    indices = stratified_split(labels, CLASSIFICATION_SIZES["mnist5k_cnn16"], seed=0)
    assert [len(i) for i in indices] == [3500, 500, 1000]
    assert len(np.unique(np.concatenate(indices))) == 5000
    task = tasks["mnist5k_cnn16"]
    for split, index, per_class in zip(SPLITS, indices, (350, 50, 100), strict=True):
        assert (np.bincount(labels[index], minlength=10) == per_class).all()
        assert np.array_equal(task._data[split][1].cpu().numpy(), labels[index])


def test_stratified_split_depends_on_seed_and_checks_sizes() -> None:
    """stratified_split is fixed by its seed, changes with it, and rejects sizes that do not fit."""
    labels = np.repeat(np.arange(4), 25)
    a, b, c = (stratified_split(labels, (60, 20, 20), seed) for seed in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    with pytest.raises(ValueError, match="do not fit"):
        stratified_split(labels, (60, 30, 20), 0)


def test_mnist5k_model_and_inputs(tasks: dict[str, Task]) -> None:
    """mnist5k_cnn16's model has 19,146 parameters and takes 1x16x16 normalised images."""
    task = tasks["mnist5k_cnn16"]
    assert sum(p.numel() for p in task.init_params(0)) == 19_146
    inputs, labels = next(task.batches("train", 0))
    assert inputs.shape == (task.batch_size, 1, 16, 16) and inputs.dtype == torch.float32
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() <= 9
    train = task._data["train"][0]
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)


# -- quadratic --------------------------------------------------------------------------------
def test_quadratic_evaluate_is_analytic_expected_loss(tasks: dict[str, Task]) -> None:
    """evaluate = 0.5 (w - c)^T A (w - c) + 0.5 noise^2 tr(A), and A has the documented
    eigenvalues (log-spaced from lambda_max / condition to lambda_max)."""
    task = tasks["quadratic"]
    hessian, centre = task.hessian.double(), task.centre.double()
    eigenvalues = torch.linalg.eigvalsh(hessian)
    expected_eigs = torch.logspace(-2, 0, 10, dtype=torch.float64)  # condition 100, lambda_max 1
    torch.testing.assert_close(eigenvalues, expected_eigs, atol=1e-6, rtol=1e-5)
    for seed in range(3):
        (w,) = task.init_params(seed)
        r = w.double() - centre
        expected = 0.5 * r @ hessian @ r + 0.5 * 0.5**2 * torch.trace(hessian)
        for split in SPLITS:
            assert task.evaluate((w,), split)["loss"] == pytest.approx(expected.item(), rel=1e-5)
    # At the centre only the noise floor remains.
    noise_floor = 0.5 * 0.5**2 * float(expected_eigs.sum())
    assert task.evaluate((task.centre,), "test")["loss"] == pytest.approx(noise_floor, rel=1e-5)


def test_quadratic_minibatch_loss_is_noisy_and_unbiased(tasks: dict[str, Task]) -> None:
    """Minibatch losses vary from batch to batch, and their mean over many batches equals
    evaluate's expected loss within five standard errors."""
    task = tasks["quadratic"]
    params = task.init_params(0)
    batches = task.batches("train", 7)
    with torch.no_grad():
        losses = torch.stack([task.loss(params, next(batches)) for _ in range(2000)]).double()
    assert losses.std() > 0.01
    standard_error = losses.std().item() / math.sqrt(len(losses))
    expected = task.evaluate(params, "train")["loss"]
    assert abs(losses.mean().item() - expected) < 5 * standard_error


def test_quadratic_without_noise_has_exact_minibatch_loss() -> None:
    """With noise=0 (the default) every minibatch loss is the exact loss."""
    task = create_task("quadratic", dim=5)
    params = task.init_params(0)
    assert task.loss(params, next(task.batches("valid", 3))).item() == pytest.approx(
        task.evaluate(params, "valid")["loss"], rel=1e-6
    )


# -- configuration errors ---------------------------------------------------------------------
def _unavailable_device() -> str:
    return "cuda:64" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size_is_usage_error(name: str, batch_size: Any) -> None:
    """batch_size must be a positive integer; anything else is a one-line UsageError naming it."""
    with pytest.raises(UsageError, match="batch_size must be a positive integer") as info:
        create_task(name, batch_size=batch_size)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("device", [_unavailable_device(), "tpu", "not a device"])
def test_unavailable_device_is_usage_error(name: str, device: str) -> None:
    """A device this machine lacks (or that does not exist) is a one-line UsageError."""
    with pytest.raises(UsageError, match="device") as info:
        create_task(name, device=device)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "cfg", [{"dim": 0}, {"dim": -3}, {"condition": 0.5}, {"lambda_max": 0.0}, {"noise": -1.0}]
)
def test_quadratic_bad_config_is_usage_error(cfg: dict[str, Any]) -> None:
    """quadratic rejects a non-positive dim, condition < 1, lambda_max <= 0 and noise < 0."""
    with pytest.raises(UsageError, match=r"^quadratic: need an integer dim > 0"):
        create_task("quadratic", **cfg)


def test_digits_bad_hidden_is_usage_error() -> None:
    """digits_mlp rejects a non-positive hidden width."""
    with pytest.raises(UsageError, match="hidden must be a positive integer"):
        create_task("digits_mlp", hidden=0)
