"""The official CIFAR-10 python batches (``cifar-10-batches-py/``): md5-checked, restricted-unpickled, downloadable.

Each ``data_batch_1..5`` / ``test_batch`` pickle is a dict with ``data``: uint8 ``[10000, 3072]`` (each row
is an image in CHW order: 1024 red, 1024 green, 1024 blue values, rows of 32) and ``labels``: 10000 ints.
``batches.meta`` holds ``label_names``. Files are checked against the published md5s before unpickling,
and unpickled with :func:`qmap.data.safe_pickle.restricted_loads` (no code can run).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DataError
from .checksums import file_digest, verify_md5
from .imageset import ImageDataset
from .safe_pickle import restricted_loads

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FIX_HINT = "delete it and run 'qmap data prepare --download' (or copy a good cifar-10-batches-py/ there)"


def batch_files(folder: Path, split: str) -> list[Path]:
    return [folder / name for name in [*SPLIT_BATCHES[split], "batches.meta"]]


def has_split(folder: Path, split: str) -> bool:
    """True when every file the split needs is present (it may still fail its md5 check)."""
    return all(p.is_file() for p in batch_files(folder, split))


def read_pickle(path: Path, md5: dict[str, str] | None = None) -> dict:
    """Unpickle one batch file after checking its md5 (``md5=None``: the published table)."""
    md5 = FILE_MD5 if md5 is None else md5
    if path.name in md5:
        verify_md5(path, md5[path.name], FIX_HINT)
    obj = restricted_loads(path.read_bytes(), source=str(path))
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def decode_rows(data: np.ndarray, source: str) -> np.ndarray:
    """``[N, 3072]`` CHW-flattened rows → uint8 ``[N, 32, 32, 3]``."""
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: 'data' must be uint8 [N, 3072] (32x32 RGB), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def load_pickles(folder: Path, split: str, md5: dict[str, str] | None = None) -> ImageDataset:
    """Load ``split`` ('train' = data_batch_1..5 concatenated, 'test' = test_batch) from the official pickles."""
    meta = read_pickle(folder / "batches.meta", md5)
    classes = tuple(meta.get("label_names", ()))
    images, labels = [], []
    for name in SPLIT_BATCHES[split]:
        batch = read_pickle(folder / name, md5)
        if "data" not in batch or "labels" not in batch:
            raise DataError(f"{folder / name}: missing 'data' or 'labels'")
        images.append(decode_rows(batch["data"], str(folder / name)))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return ImageDataset(np.concatenate(images), np.concatenate(labels), classes, f"{folder} ({split}, pickles)")


def download(root: Path, url: str = URL, archive_md5: str = ARCHIVE_MD5, md5: dict[str, str] | None = None) -> Path:
    """Fetch the official archive into ``root``, check its md5 and every member's, then atomically rename each
    verified file into ``root/cifar-10-batches-py/``: nothing half-written ever appears under a final name."""
    md5 = FILE_MD5 if md5 is None else md5
    target = root / FOLDER
    if target.exists() and all((target / n).is_file() for n in md5):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".cifar10-download.", dir=root))
    except OSError as e:
        raise DataError(f"cannot download CIFAR-10 into {root}: {e}") from None
    try:
        archive = work / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as f:
                shutil.copyfileobj(resp, f)
        except OSError as e:
            raise DataError(f"cannot download {url} ({e}); are you offline? Copy cifar-10-batches-py/ into {root} "
                            "or use the JPEG mirror") from None
        if (got := file_digest(archive)) != archive_md5:
            raise DataError(f"downloaded {url} has md5 {got}, expected {archive_md5}; try again")
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and Path(m.name).name in md5
                       and Path(m.name).parent.name == FOLDER]
            tf.extractall(work / "x", members=members, filter="data")
        extracted = work / "x" / FOLDER
        for name, expected in md5.items():
            verify_md5(extracted / name, expected, "the download is damaged; try again")
        target.mkdir(exist_ok=True)
        for name in md5:  # each file appears complete and verified, or not at all
            os.replace(extracted / name, target / name)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
