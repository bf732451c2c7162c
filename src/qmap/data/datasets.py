"""CIFAR-10 from whichever source a data root holds, in this priority:

1. ``cifar-10-batches-py/`` — the official pickles (genuine pixels), when every file of the split is there;
2. ``cifar10-jpeg-q75/cifar10_jpeg_q75.tar`` — the complete JPEG-q75 mirror (lossy), put back into the
   official order with ``order_index.csv`` so "test image k" is image k of ``test_batch``;
3. ``cifar10-jpeg-q75/cifar10_jpeg/`` — the same mirror extracted.

Splits ``test_exact`` / ``train_exact`` are the genuine first 1017 images of ``test_batch`` / of each
``data_batch_1..5`` (5085), from ``cifar10-exact-prefix/cifar10_exact_prefix.npz``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from . import cifar10
from .cache import cached, default_cache_dir, source_key
from .checksums import read_md5sums, verify_md5
from .folders import decode_folder, load_image_folder, require_split
from .imageset import ImageDataset

log = logging.getLogger("qmap")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MIRROR_DIR = "cifar10-jpeg-q75"
MIRROR_TAR = f"{MIRROR_DIR}/cifar10_jpeg_q75.tar"
MIRROR_TREE = f"{MIRROR_DIR}/cifar10_jpeg"
ORDER_INDEX = f"{MIRROR_DIR}/order_index.csv"
EXACT_NPZ = "cifar10-exact-prefix/cifar10_exact_prefix.npz"
SPLITS = ("train", "test", "train_exact", "test_exact")
PER_CLASS = {"train": 5000, "test": 1000}  # CIFAR-10 is balanced: images per class in each split
FIX_HINT = ("point --data / QMAP_DATA at a folder holding cifar10-jpeg-q75/ or cifar-10-batches-py/, "
            "or run 'qmap data prepare --download' (needs internet)")


def official_order(index_csv: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(JPEG member names, labels) of ``split`` in the official batch order, from ``order_index.csv``."""
    batches = cifar10.SPLIT_BATCHES[split]
    try:
        with open(index_csv, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["batch"] in batches]
        rows.sort(key=lambda r: (batches.index(r["batch"]), int(r["index"])))
        return [r["jpeg_path"] for r in rows], np.array([int(r["label"]) for r in rows], dtype=np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{index_csv}: unreadable order index ({type(e).__name__}: {e})") from None


def to_official_order(ds: ImageDataset, index_csv: Path, split: str) -> ImageDataset:
    """Reorder a mirror split from folder order (class, then file name) into the official batch order."""
    names, labels = official_order(index_csv, split)
    if len(names) != len(ds):
        raise DataError(f"{index_csv} lists {len(names)} {split} images but the mirror holds {len(ds)}")
    paths = [PurePosixPath(n) for n in names]
    folder_rank = sorted(range(len(paths)), key=lambda i: (paths[i].parent.name, paths[i].name))
    position = np.empty(len(paths), dtype=np.int64)
    position[folder_rank] = np.arange(len(paths))  # position[row] = where that row's JPEG sits in folder order
    out = ds.subset(position, source=f"{ds.source}, official order")
    if not np.array_equal(out.labels, labels):
        raise DataError(f"{index_csv}: labels disagree with the mirror's class folders ({split})")
    return out


def check_counts(ds: ImageDataset, source: Path, split: str) -> None:
    """A CIFAR-10 split holds the same number of images of every class (5000 train / 1000 test); anything else
    is a truncated or damaged archive. A balanced but smaller set (a hand-made subset) loads with a warning."""
    counts = ds.class_counts()
    if counts.min() != counts.max():
        short = ", ".join(f"{c} {n}" for c, n in zip(ds.classes, counts) if n != counts.max())
        raise DataError(f"{source}: the {split} split is truncated or damaged: {counts.max()} images in most "
                        f"classes but {short} (CIFAR-10 has {PER_CLASS.get(split, '?')} per class); {FIX_HINT}")
    if split in PER_CLASS and counts.max() != PER_CLASS[split]:
        log.info(f"{source}: the {split} split holds {len(ds)} images (a subset; CIFAR-10 has "
                 f"{10 * PER_CLASS[split]})")


def load_mirror(root: Path, split: str, cache_dir: Path | None) -> ImageDataset | None:
    """The JPEG mirror's ``split`` in official order (tar preferred, else extracted tree); None if neither exists.

    The first load checks the tar's md5 (from ``md5sums`` beside it), decodes both splits in one pass,
    reorders them and caches the result; later loads read the cache. Without an order index and an md5 a
    split must hold equally many images of every class (:func:`check_counts`), so an archive cut short at a
    member boundary is refused rather than loaded with fewer images.
    """
    tar, tree = root / MIRROR_TAR, root / MIRROR_TREE
    source = tar if tar.is_file() else tree if tree.is_dir() else None
    if source is None:
        return None
    index_csv = root / ORDER_INDEX

    def build_all() -> dict[str, ImageDataset]:
        verified = False
        if source == tar and (md5 := read_md5sums(tar.parent).get(tar.name)):
            verify_md5(tar, md5, FIX_HINT)
            verified = True
        decoded = decode_folder(source, size=(32, 32))
        require_split(decoded, source, split)
        for s, ds in sorted(decoded.items(), key=lambda kv: kv[0] != "test"):  # errors of either split first
            if ds.classes != CLASSES:
                raise DataError(f"{source}: class folders {ds.classes} are not the CIFAR-10 classes {CLASSES}")
            if index_csv.is_file():  # the index fixes the count (and the order) of every split
                decoded[s] = to_official_order(ds, index_csv, s)
            elif not verified:  # no index, no md5: the per-class counts are what is left to catch a cut archive
                check_counts(ds, source, s)
        return decoded

    key = source_key(source, "official" if index_csv.is_file() else "folder")
    return cached(cache_dir or default_cache_dir(root), source.stem, key, split, build_all)


def load_exact(root: Path, split: str) -> ImageDataset:
    """Genuine CIFAR-10 prefixes: ``test_exact`` (1017 test images) or ``train_exact`` (5 x 1017 train)."""
    path = root / EXACT_NPZ
    if not path.is_file():
        raise DataError(f"split {split!r} needs {path}, which does not exist; {FIX_HINT}")
    if md5 := read_md5sums(path.parent).get(path.name):
        verify_md5(path, md5, FIX_HINT)
    images, labels = [], []
    try:
        with np.load(path, allow_pickle=False) as z:
            for b in cifar10.SPLIT_BATCHES[split.removesuffix("_exact")]:
                rows = z[f"{b}_data_prefix"]
                images.append(cifar10.decode_rows(rows, f"{path}[{b}]"))
                labels.append(z[f"{b}_labels"][: len(rows)].astype(np.int64))
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable or missing arrays ({type(e).__name__}: {e}); {FIX_HINT}") from None
    return ImageDataset(np.concatenate(images), np.concatenate(labels), CLASSES, f"{path} ({split}, genuine)")


def load_cifar10(root: str | Path, split: str = "train", cache_dir: str | Path | None = None,
                 download: bool = False) -> ImageDataset:
    """CIFAR-10 ``split`` ('train' | 'test' | 'train_exact' | 'test_exact') from the best source under ``root``.

    ``download=True`` fetches the official pickles into ``root`` when no source is found.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split.endswith("_exact"):
        return load_exact(root, split)
    pickles = root / cifar10.FOLDER
    if cifar10.has_split(pickles, split):
        return cifar10.load_pickles(pickles, split)
    ds = load_mirror(root, split, Path(cache_dir) if cache_dir else None)
    if ds is not None:
        return ds
    if download:
        return cifar10.load_pickles(cifar10.download(root), split)
    missing = [p.name for p in cifar10.batch_files(pickles, split) if not p.is_file()]
    raise DataError(f"CIFAR-10 {split!r} not found under {root}: looked at {pickles}/ (missing "
                    f"{', '.join(missing)}), {root / MIRROR_TAR} (absent), {root / MIRROR_TREE}/ (absent); {FIX_HINT}")


def load_split(root: str | Path, split: str, folder: str | Path | None = None,
               size: tuple[int, int] | None = None) -> ImageDataset:
    """``split`` of a run's dataset: CIFAR-10 under ``root``, or the image folder/tar ``folder``
    (``ROOT/{train,val|test}/<class>/*``, images of any size resized to ``size`` = (H, W) when given)."""
    if folder is None:
        ds = load_cifar10(root, split)
        if size is not None and tuple(ds.images.shape[1:3]) != tuple(size):
            raise DataError(f"CIFAR-10 images are {ds.images.shape[2]}x{ds.images.shape[1]}, the model input shape "
                            f"asks for {size[1]}x{size[0]}; give an image folder to use another size")
        return ds
    if split not in ("train", "test"):
        raise DataError(f"split {split!r} is CIFAR-10's; an image folder has train and test (or val)")
    return load_image_folder(folder, split, size, resize=size is not None)


def describe_sources(root: str | Path) -> list[dict]:
    """What each known source under ``root`` holds (for ``qmap data info``): name, path, status."""
    root = Path(root)
    pickles = root / cifar10.FOLDER
    out = []
    for split in ("train", "test"):
        missing = [p.name for p in cifar10.batch_files(pickles, split) if not p.is_file()]
        out.append({"source": f"official pickles ({split})", "path": str(pickles),
                    "status": "complete" if not missing else "missing " + ", ".join(missing)})
    for name, rel in (("JPEG-q75 mirror tar", MIRROR_TAR), ("JPEG-q75 mirror tree", MIRROR_TREE),
                      ("mirror order index", ORDER_INDEX), ("exact prefix (test_exact, train_exact)", EXACT_NPZ)):
        status = "present" if (root / rel).exists() else "absent"
        out.append({"source": name, "path": str(root / rel), "status": status})
    return out
