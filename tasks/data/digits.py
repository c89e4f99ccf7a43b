"""scikit-learn's handwritten digits: 1,797 8x8 images, pixel values 0..16, 10 classes.

Bundled in scikit-learn, so offline everywhere.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)``: float64 features (1797, 64) in [0, 16] and int64 labels (1797,)."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
