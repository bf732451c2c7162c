"""File checksums (md5 for the published dataset files, sha256 for our own provenance)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DataError


def file_digest(path: str | Path, algo: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, expected: str, hint: str) -> None:
    """Raise :class:`DataError` (one line, with ``hint`` on what to do) unless ``path`` has md5 ``expected``."""
    got = file_digest(path)
    if got != expected:
        size = path.stat().st_size
        raise DataError(f"md5 mismatch for {path} ({size:,} bytes): got {got}, expected {expected} — the file is "
                        f"corrupt or truncated; {hint}")


def read_md5sums(folder: Path) -> dict[str, str]:
    """The ``md5sums`` file of a folder (``<md5>  <name>`` lines, as written by md5sum) as {name: md5}."""
    p = folder / "md5sums"
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out
