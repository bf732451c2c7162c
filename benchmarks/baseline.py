"""The ``qmap`` package of another commit, extracted for a side-by-side benchmark (nothing of it stays in ``src``)."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def extract_package(commit: str, folder: Path, name: str = "qmap") -> Path:
    """``src/qmap`` of ``commit`` (``git archive``) as ``folder/<name>``; returns ``folder`` (the import root)."""
    try:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src/qmap"], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"cannot read commit {commit} of {REPO} with git: {e}") from None
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(folder, filter="data")
    (folder / "src" / "qmap").rename(folder / name)
    return folder
