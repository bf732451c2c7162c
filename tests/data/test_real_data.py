"""Real-data checks (QMAP_DATA): the genuine metadata pickle, the exact prefix, and the mirror's official order."""

from __future__ import annotations

import numpy as np
import pytest

from qmap.data import CLASSES, cifar10, load_cifar10

pytestmark = pytest.mark.slow


def test_genuine_batches_meta_passes_md5_and_the_restricted_unpickler(data_root):
    meta = cifar10.read_pickle(data_root / "cifar-10-batches-py/batches.meta")
    assert tuple(meta["label_names"]) == CLASSES


def test_exact_prefix_matches_the_published_label_starts(data_root):
    test = load_cifar10(data_root, "test_exact")
    train = load_cifar10(data_root, "train_exact")
    assert len(test) == 1017 and len(train) == 5085
    assert list(test.labels[:10]) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert list(train.labels[:10]) == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_mirror_test_image_k_is_official_test_image_k(data_root):
    """JPEG q75 vs genuine pixels: mean abs error ~5.8 when aligned, ~50+ for a wrong match (SOURCE.txt)."""
    mirror = load_cifar10(data_root, "test")
    exact = load_cifar10(data_root, "test_exact")
    assert len(mirror) == 10000 and np.array_equal(mirror.labels[:1017], exact.labels)
    err = np.abs(mirror.images[:1017].astype(np.int16) - exact.images).mean(axis=(1, 2, 3))
    assert err.mean() < 7 and err.max() < 20
