"""``ImageDataset``: decoded images as one uint8 array, the unit every loader returns.

``images`` is uint8 ``[N, H, W, 3]`` (NHWC, RGB, 0..255), ``labels`` int64 ``[N]`` in ``0..len(classes)-1``.
``checksum`` is the sha256 of ``images.tobytes() + labels.tobytes()`` (hex): two datasets with the same
checksum hold the same pixels and labels in the same order, whatever file they came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError


@dataclass
class ImageDataset:
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str
    _checksum: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(f"{self.source}: images must be uint8 [N,H,W,3], got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{self.source}: {len(self.images)} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"{self.source}: labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            h = hashlib.sha256(np.ascontiguousarray(self.images).data)
            h.update(np.ascontiguousarray(self.labels).data)
            self._checksum = h.hexdigest()
        return self._checksum

    def subset(self, indices, source: str | None = None) -> ImageDataset:
        """The images at ``indices`` (in that order) as a new dataset."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, source or f"{self.source}[subset]")

    def head(self, n: int) -> ImageDataset:
        """The first ``n`` images (all of them when there are fewer), labelled ``<source>[:n]``."""
        return self.subset(range(min(n, len(self))), source=f"{self.source}[:{n}]")

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))
