"""Image-folder datasets: a tree ``ROOT/{train,val,test}/<class>/*.{png,jpg,jpeg}`` or a ``.tar`` of one.

The evaluation split of a folder is ``test/``, or ``val/`` when there is no ``test/`` (the ImageNet-style
layout). Images of any size load: with ``resize`` each is resized (bilinear, antialiased) to the requested
``size``; without it they must all have that size (or the first image's).

In a tar the tree may sit under one prefix folder (``cifar10_jpeg/train/<class>/...``). Classes are the
sorted class-folder names found in any split (so labels agree between splits); images are ordered by class,
then by file name. Every image is decoded with Pillow to RGB uint8 once; the result is cached (see
:mod:`qmap.data.cache`) and later loads read the cache.

Hostile files give a :class:`~qmap.errors.DataError`, not a crash: a member larger than
:data:`MAX_MEMBER_BYTES`, an image whose header declares another size than required (checked before the
pixels are decoded) or more than :data:`MAX_PIXELS` pixels (a decompression bomb), a truncated tar.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .cache import cached, default_cache_dir, source_key
from .imageset import ImageDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")
MAX_MEMBER_BYTES = 16 << 20     # one image file; a CIFAR JPEG is ~1 KiB
MAX_PIXELS = 4096 * 4096        # any image; CIFAR images are 32x32


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """``(split, class)`` for a path ``.../<split>/<class>/<image>``, else None."""
    if len(parts) >= 3 and parts[-3] in SPLITS and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES:
        return parts[-3], parts[-2]
    return None


def _iter_tree(root: Path) -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """``(split, class, name, read)`` for every image file under ``root``."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and (sc := _split_class(p.relative_to(root).parts)):
            if p.stat().st_size > MAX_MEMBER_BYTES:
                raise DataError(f"{p}: {p.stat().st_size:,} bytes is too large for an image file")
            yield *sc, str(p), p.read_bytes


def _iter_tar(path: Path) -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """``(split, class, member name, read)`` for every image member, streaming through the tar once."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.isfile() and (sc := _split_class(PurePosixPath(m.name).parts)):
                    if m.size > MAX_MEMBER_BYTES:
                        raise DataError(f"{path}: member {m.name} ({m.size:,} bytes) is too large for an image")
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:
                        raise DataError(f"{path}: member {m.name} is truncated")
                    yield *sc, m.name, (lambda d=data: d)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable tar (truncated or corrupt): {e}") from None


def decode_image(data: bytes, name: str, size: tuple[int, int] | None, resize: bool = False) -> np.ndarray:
    """Decode ``data`` to uint8 ``[H, W, 3]`` RGB; ``size`` = required ``(H, W)`` or None (``resize``: resize
    to it instead of requiring it). The size in the header is checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if size is not None and (h, w) != tuple(size) and not resize:
                    raise DataError(f"image {name} is {w}x{h} (WxH), expected {size[1]}x{size[0]} (give the "
                                    f"model's input shape to resize images of other sizes)")
                if w * h > MAX_PIXELS:
                    raise DataError(f"image {name} declares {w}x{h} pixels (a decompression bomb?)")
                rgb = im.convert("RGB")
                if size is not None and (h, w) != tuple(size):
                    rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    h, w = size
                arr = np.asarray(rgb)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image {name}: decompression bomb refused ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot decode image {name}: {e}") from None
    if arr.shape[:2] != (h, w):
        raise DataError(f"image {name} decodes to {arr.shape[1]}x{arr.shape[0]}, its header says {w}x{h}")
    return arr


def decode_folder(source: Path, size: tuple[int, int] | None = None, resize: bool = False
                  ) -> dict[str, ImageDataset]:
    """Read and decode every image of every split from a folder tree or tar, in one pass (no cache)."""
    entries = _iter_tar(source) if source.is_file() else _iter_tree(source)
    found: dict[str, list[tuple[str, str, bytes]]] = {}
    for split, cls, name, read in entries:
        found.setdefault(split, []).append((cls, name, read()))
    if not found:
        raise DataError(f"{source}: no images found (expected {'|'.join(SPLITS)}/<class>/*.png|jpg)")
    classes = tuple(sorted({cls for items in found.values() for cls, _, _ in items}))
    class_id = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in found.items():
        items.sort(key=lambda e: (e[0], e[1]))
        shape = size or decode_image(items[0][2], items[0][1], None).shape[:2]
        images = np.empty((len(items), *shape, 3), dtype=np.uint8)
        for i, (_, name, data) in enumerate(items):
            images[i] = decode_image(data, name, shape, resize)
        labels = np.array([class_id[c] for c, _, _ in items], dtype=np.int64)
        out[split] = ImageDataset(images, labels, classes, f"{source} ({split})")
    return out


def require_split(decoded: dict[str, ImageDataset], source: Path, split: str) -> None:
    if split not in decoded:
        raise DataError(f"{source}: no images under {split}/<class>/ (found splits: {', '.join(decoded)})")


def load_image_folder(source: str | Path, split: str, size: tuple[int, int] | None = None,
                      cache_dir: str | Path | None = None, resize: bool = False) -> ImageDataset:
    """``split`` of the image tree / tar at ``source``, decoded once and cached (``cache_dir=None``: default).
    ``split`` 'test' reads ``val/`` when the source has no ``test/``; ``resize``: images of another size than
    ``size`` are resized to it."""
    source = Path(source)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; image folders have {', '.join(SPLITS)}")
    if not source.exists():
        raise DataError(f"image folder or tar not found: {source}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()  # never inside the user's tree

    def build_all() -> dict[str, ImageDataset]:
        decoded = decode_folder(source, size, resize)
        if split == "test" and "test" not in decoded and "val" in decoded:
            decoded["test"] = decoded["val"]
        require_split(decoded, source, split)
        return decoded

    return cached(folder, source.stem, source_key(source, size, resize), split, build_all)
