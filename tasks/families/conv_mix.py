"""``conv_mix``: narrow conv nets on 16x16 MNIST-5k (issue 24's conv family).

Architecture: 2 or 3 convolutions (3x3, stride 2, padding 1) of 4, 8 or 16 channels each (one
width for all), ReLU, tanh or GELU, global average pooling and a linear head; batch size 32 or
64. Member: the rescaling as in ``mlp_mix`` (none with probability 1/2, else log-uniform in
[0.1, 10] per tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.families.base import ACTIVATIONS, Family, log_uniform
from tasks.families.member import register_family
from tasks.families.mlp_mix import SCALE_RANGE

CHANNELS = (4, 8, 16)
BATCH_SIZES = (32, 64)


@register_family("conv_mix")
class ConvMix(Family):
    """Family of narrow conv nets on MNIST-5k at 16x16 (offline everywhere).

    2-3 stride-2 3x3 convolutions of 4-16 channels, batch 32 or 64, random per-tensor
    rescaling."""

    def sample_architecture(self, rng: np.random.Generator) -> dict[str, Any]:
        depth = int(rng.integers(2, 4))
        channels = int(rng.choice(CHANNELS))
        return {
            "kind": "conv",
            "image_size": 16,
            "hidden": (channels,) * depth,
            "activation": str(rng.choice(ACTIVATIONS)),
            "batch_size": int(rng.choice(BATCH_SIZES)),
        }

    def sample_member(
        self, rng: np.random.Generator, architecture: dict[str, Any]
    ) -> dict[str, Any]:
        tensors = 2 * (len(architecture["hidden"]) + 1)
        if rng.random() < 0.5:
            scales = (1.0,) * tensors
        else:
            scales = tuple(log_uniform(rng, *SCALE_RANGE) for _ in range(tensors))
        return {"dataset": "mnist5k_16", "param_scale": scales}
