"""Helpers of the hostile-input tests (tests/hostile): a snapshot of a folder, and :func:`refused`, the one
assertion every hostile case makes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from qmap.cli import main

DROP = object()  # a manifest field to remove


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: relative path -> 'dir' or the sha256 of the file (links by target)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(argv: list[str], box, capsys, code: int | None = None, says: str | None = None) -> str:
    """Run the CLI in-process on ``argv`` and assert the hostile-input contract: a non-zero exit (``code`` when
    given), exactly one line on stderr (containing ``says``), no traceback, and the sandbox exactly as before
    (nothing left behind, nothing changed or deleted). Returns the stderr line."""
    before = snapshot(box.path)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0, f"exit 0 for a hostile input; stdout: {out[:300]}"
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}: {err}"
    if says is not None:
        assert says in err, err
    assert snapshot(box.path) == before, "the sandbox changed: a file was left behind, changed or deleted"
    return lines[0]
