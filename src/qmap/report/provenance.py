"""Provenance for results: qmap version, git sha, command line, machine, date, seed, file checksums."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

from .. import __version__


def git_sha(cwd: str | Path | None = None) -> str:
    """The HEAD commit of the checkout holding this package (with ``-dirty`` if it has local changes)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def provenance(seed: int | None = None, **extra) -> dict:
    """A dict to embed in every results file."""
    out = {"qmap_version": __version__, "git_sha": git_sha(), "command": " ".join([Path(sys.argv[0]).name,
           *sys.argv[1:]]), "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "machine": machine()}
    if seed is not None:
        out["seed"] = seed
    out.update(extra)
    return out
