"""``digits_mlp``: scikit-learn's 8x8 digits with a one-hidden-layer MLP (a seconds-fast task)."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UsageError
from harness.registry import register_task
from tasks.classification import ClassificationTask, Splits, stratified_split
from tasks.data.digits import load_digits


@register_task("digits_mlp")
class DigitsMlp(ClassificationTask):
    """sklearn digits (8x8, 1797 images), 1097/200/500 split, MLP 64-64-10 with ReLU."""

    default_steps = 1000
    split_sizes = (1097, 200, 500)

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        split_seed: int = 0,
        hidden: int = 64,
    ) -> None:
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden <= 0:
            raise UsageError(f"digits_mlp: hidden must be a positive integer, got {hidden!r}")
        self.hidden = hidden
        super().__init__(device=device, batch_size=batch_size, split_seed=split_seed)

    def load_splits(self, split_seed: int) -> Splits:
        features, labels = load_digits()
        features = features / 16.0
        train, valid, test = stratified_split(labels, self.split_sizes, split_seed)
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
        scaled = (features - mean) / std
        return Splits(
            train=(scaled[train], labels[train]),
            valid=(scaled[valid], labels[valid]),
            test=(scaled[test], labels[test]),
        )

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10))
