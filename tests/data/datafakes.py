"""Synthetic datasets on disk for the data tests: fake CIFAR pickles, image trees and tars (small)."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from qmap.data import cifar10

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": f"fake {seed}", "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}


def write_pickles(folder: Path, n: int = 20) -> dict[str, str]:
    """A complete fake ``cifar-10-batches-py`` (n images per batch); returns its md5 table."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*cifar10.SPLIT_BATCHES["train"], *cifar10.SPLIT_BATCHES["test"]]):
        (folder / name).write_bytes(pickle.dumps(fake_batch(n, i), protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES, "num_vis": 3072}, protocol=2))
    return {p.name: md5(p) for p in folder.iterdir()}


def write_tree(root: Path, per_class: dict[str, int], classes=CLASSES[:3], size=(32, 32), fmt="png", seed=0) -> Path:
    """``root/<split>/<class>/NNNN.<fmt>`` with random images; ``per_class`` = {split: images per class}."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:04d}.{fmt}")
    return root


def tar_tree(tree: Path, tar_path: Path, prefix: str = "imgs") -> Path:
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tree, arcname=prefix)
    return tar_path
