"""``mlp_mix`` and ``mlp_mix_fmnist``: MLPs on small grey images (issue 24's MLP family).

Architecture (the group key): the image size (8x8 with probability 3/4, else 16x16), 1-3
hidden layers each of width 16, 32, 64 or 128, one activation (ReLU, tanh or GELU) and a batch
size of 32, 64 or 128, all uniform. Member: a dataset of that image size, uniform, and the
rescaling: with probability 1/2 none, else each tensor's scale log-uniform in [0.1, 10].
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tasks.families.base import ACTIVATIONS, Family, log_uniform
from tasks.families.member import register_family

WIDTHS = (16, 32, 64, 128)
BATCH_SIZES = (32, 64, 128)
SCALE_RANGE = (0.1, 10.0)


class MlpFamily(Family):
    """Shared sampler; subclasses name their datasets per image size."""

    datasets: ClassVar[dict[int, tuple[str, ...]]] = {}

    def sample_architecture(self, rng: np.random.Generator) -> dict[str, Any]:
        image_size = 8 if rng.random() < 0.75 else 16
        depth = int(rng.integers(1, 4))
        return {
            "kind": "mlp",
            "image_size": image_size,
            "hidden": tuple(int(rng.choice(WIDTHS)) for _ in range(depth)),
            "activation": str(rng.choice(ACTIVATIONS)),
            "batch_size": int(rng.choice(BATCH_SIZES)),
        }

    def sample_member(
        self, rng: np.random.Generator, architecture: dict[str, Any]
    ) -> dict[str, Any]:
        names = self.datasets[architecture["image_size"]]
        dataset = names[int(rng.integers(len(names)))]
        tensors = 2 * (len(architecture["hidden"]) + 1)
        if rng.random() < 0.5:
            scales = (1.0,) * tensors
        else:
            scales = tuple(log_uniform(rng, *SCALE_RANGE) for _ in range(tensors))
        return {"dataset": dataset, "param_scale": scales}


@register_family("mlp_mix")
class MlpMix(MlpFamily):
    """Family of MLPs on digits and MNIST-5k at 8x8 or 16x16 (offline everywhere).

    1-3 hidden layers of widths 16-128, ReLU, tanh or GELU, batch 32-128, random per-tensor
    rescaling."""

    datasets: ClassVar[dict[int, tuple[str, ...]]] = {
        8: ("digits", "mnist5k_8"),
        16: ("mnist5k_16",),
    }


@register_family("mlp_mix_fmnist")
class MlpMixFmnist(MlpFamily):
    """Family mlp_mix with Fashion-MNIST at 8x8 and 16x16 too (needs the Fashion-MNIST files)."""

    datasets: ClassVar[dict[int, tuple[str, ...]]] = {
        8: ("digits", "mnist5k_8", "fmnist_8"),
        16: ("mnist5k_16", "fmnist_16"),
    }
