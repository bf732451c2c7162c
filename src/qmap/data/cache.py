"""Decode once, reuse: decoded datasets cached as uncompressed ``.npz`` files (no pickle inside).

Cache folder: ``$QMAP_CACHE`` if set, else ``<data_root>/.qmap_cache`` when the data root is writable (by
its permission bits, even for root), else ``$XDG_CACHE_HOME/qmap`` (default ``~/.cache/qmap``) — the shared
data folder is read-only and stays untouched. An entry's
name holds a key derived from the source file's absolute path, size and mtime (plus the decode options),
so replacing the source invalidates it. Entries are written atomically (permissions from the umask, so a
shared cache stays readable by others). On load the sha256 of the decoded arrays is recomputed and compared
with the one stored at build time: an edited or damaged entry is ignored (with a warning) and rebuilt, and the
dataset's checksum (the provenance figure) is always the recomputed one, never copied from the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from .imageset import ImageDataset

FORMAT_VERSION = 1
log = logging.getLogger("qmap")


def _open_for_writing(folder: Path) -> bool:
    """True when ``folder`` has a write permission bit and we may write it. The bits are checked as well as
    ``os.access`` because root passes ``os.access`` even on a folder published read-only (mode 0555)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def default_cache_dir(data_root: Path | None = None) -> Path:
    if os.environ.get("QMAP_CACHE"):
        return Path(os.environ["QMAP_CACHE"]).expanduser()
    if data_root is not None:
        inside = data_root / ".qmap_cache"
        if _open_for_writing(inside) or (not inside.exists() and _open_for_writing(data_root)):
            return inside
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qmap"


def source_key(path: Path, *options) -> str:
    """16 hex digits identifying ``path`` (absolute path, size, mtime; for a folder, of every file in it)
    plus the decode ``options``."""
    st = path.stat()
    ident = "|".join(map(str, [path.resolve(), st.st_size, st.st_mtime_ns, FORMAT_VERSION, *options]))
    if path.is_dir():  # a folder's own mtime misses edits deeper down: include every file's size and mtime
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                ident += f"|{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _read_entry(path: Path) -> ImageDataset | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            ds = ImageDataset(z["images"], z["labels"], tuple(str(c) for c in z["classes"]), str(z["source"]))
            stored = str(z["checksum"])
    except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt, whatever the failure
        log.warning(f"ignoring unreadable cache entry {path} ({type(e).__name__}); rebuilding")
        return None
    if ds.checksum != stored:  # recomputed from the arrays just read
        log.warning(f"cache entry {path} does not match its recorded checksum (edited or damaged); rebuilding")
        return None
    return ds


def _write_entry(path: Path, ds: ImageDataset) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=ds.images, labels=ds.labels, classes=np.array(ds.classes, dtype=str),
             source=np.array(ds.source), checksum=np.array(ds.checksum))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        log.warning(f"cannot write cache entry {path} ({e.strerror}); continuing without cache")


def cached(cache_dir: Path, name: str, key: str, split: str,
           build_all: Callable[[], dict[str, ImageDataset]]) -> ImageDataset:
    """Return ``split`` as cached under ``<cache_dir>/<name>-<split>-<key>.npz``. When it is absent, call
    ``build_all()`` (one pass over the source decodes every split), store every split it returns, and
    return the one asked for."""
    def entry(s: str) -> Path:
        return cache_dir / f"{name}-{s}-{key}.npz"

    if entry(split).is_file() and (ds := _read_entry(entry(split))) is not None:
        return ds
    built = build_all()
    for s, ds in built.items():
        _write_entry(entry(s), ds)
    return built[split]
