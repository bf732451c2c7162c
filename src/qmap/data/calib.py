"""Seeded, class-balanced calibration subsets for post-training quantization.

``n`` images with ``n // C`` per class (C classes); the remaining ``n mod C`` go one each to classes drawn
by the seeded generator. Within a class, images are drawn without replacement. The result keeps the
dataset's order (sorted indices), so the same ``(dataset, n, seed)`` always yields the same subset.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .imageset import ImageDataset


def calibration_indices(labels: np.ndarray, num_classes: int, n: int = 1024, seed: int = 0) -> np.ndarray:
    if n <= 0:
        raise DataError(f"calibration size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, n // num_classes)
    per_class[rng.permutation(num_classes)[: n % num_classes]] += 1
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class[c]:
            raise DataError(f"class {c} has {len(pool)} images, {per_class[c]} needed for a balanced set of {n}")
        chosen.append(rng.choice(pool, size=per_class[c], replace=False))
    return np.sort(np.concatenate(chosen))


def calibration_set(dataset: ImageDataset, n: int = 1024, seed: int = 0) -> ImageDataset:
    """A class-balanced subset of ``n`` images (uint8, like every dataset; see :func:`qmap.data.to_tensor`)."""
    idx = calibration_indices(dataset.labels, len(dataset.classes), n, seed)
    return dataset.subset(idx, source=f"{dataset.source} calibration n={n} seed={seed}")
