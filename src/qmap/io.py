"""Atomic file output: write to a temporary name in the same folder, fsync, then rename over the target.

A run killed at any moment leaves either the previous complete file or the new complete file, never a half.
Every file qmap writes (results, models, hardware vectors, caches, reports and plots) goes through
:func:`atomic_write_bytes`. The final file gets the permissions an ordinary ``open()`` would give it
(``0666`` minus the process umask), not the ``0600`` of a temporary file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None for a regular file: a device or fifo (/dev/zero
    would be read forever) is named as such rather than reported missing."""
    p = Path(path)
    if p.is_file():
        return None
    if not p.exists():
        return "not found"
    return "is a folder, not a file" if p.is_dir() else "is not a regular file"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def atomic_savefig(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Render a matplotlib figure in memory (format from the file suffix) and write it atomically."""
    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    atomic_write_bytes(p, buf.getvalue())
    return p


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_run_results(run_dir: str | Path) -> dict:
    """The ``results.json`` of a run folder, or a QmapError saying the folder is not a (finished) run."""
    from .errors import QmapError

    path = Path(run_dir) / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise QmapError(f"{run_dir} is not a qmap run folder: cannot read {path} ({e})") from None
