"""Run folders: how qmap claims, locks, replaces and resumes an output folder.

A *run folder* is a folder whose ``results.json`` carries the marker fields

``run_id``              a random id given when the run first started (kept across ``--resume``);
``status``              ``"running"`` | ``"failed"`` | ``"complete"``;
``config_fingerprint``  :func:`config_fingerprint` of the run's resolved config.

Rules (all checked before anything is written):

- a folder that exists, is not empty and is not a run folder is never written into or deleted;
- ``overwrite=True`` replaces only a run folder, and only once the run's inputs have loaded (the caller calls
  :meth:`RunFolder.begin` after its validation and loading, which is when the old contents go); it is refused
  when the folder holds an entry no run writes (:data:`RUN_OUTPUTS`: a user's notes, a copied checkpoint) or
  when one of the run's own inputs lies inside it (:func:`check_inputs_outside`), so it deletes only what
  qmap wrote;
- ``resume=True`` continues only a run folder whose fingerprint equals the new config's;
- one process at a time: :class:`RunFolder` holds an exclusive, non-blocking ``fcntl.flock`` on the folder
  itself for the whole run (no lock file is created); a second run into the same folder is refused at once.

Other tools (``qmap sweep``) skip a point when :func:`is_complete` says its folder already holds a complete
run of the same fingerprint.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputError
from .io import atomic_write_json

MARKER = "results.json"
# Every top-level entry a run (and ``qmap export onnx --run``) writes into its folder; --overwrite deletes only
# these. tests/pipeline/test_run_roundtrip.py checks a full run writes nothing else.
RUN_OUTPUTS = frozenset({MARKER, "report.md", "report.html", "plots", "work", "hw", "quantized_model.safetensors",
                         "model.onnx"})
STATUSES = ("running", "failed", "complete")
# Config keys that say where output goes or what it is called, not what is computed.
FINGERPRINT_EXCLUDED = ("name",)


def config_fingerprint(cfg: Any) -> str:
    """sha256 (hex) of the canonical JSON (sorted keys, no spaces) of the resolved config, without the keys in
    :data:`FINGERPRINT_EXCLUDED`. ``cfg``: a dataclass (``RunConfig``) or a dict. Two configs that compute the
    same thing have the same fingerprint whatever their name or output folder."""
    d = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    for key in FINGERPRINT_EXCLUDED:
        d.pop(key, None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(o):
    if isinstance(o, (tuple, set, frozenset)):
        return sorted(o) if isinstance(o, (set, frozenset)) else list(o)
    return str(o)


def read_marker(folder: str | Path) -> dict | None:
    """The ``results.json`` of ``folder`` when it is a run folder's (a JSON object with a ``run_id``), else None.
    Never raises: an unreadable or malformed file means "not a run folder"."""
    try:
        d = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("run_id"), str) else None


def is_run_folder(folder: str | Path) -> bool:
    return read_marker(folder) is not None


def is_complete(folder: str | Path, fingerprint: str) -> bool:
    """True when ``folder`` holds a finished run (status ``complete``) of the config with ``fingerprint``."""
    m = read_marker(folder)
    return m is not None and m.get("status") == "complete" and m.get("config_fingerprint") == fingerprint


def writable(folder: Path) -> bool:
    """A write permission bit and os.access (root passes os.access even on a folder published 0555)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK | os.X_OK)


def check_out_dir(out: str | Path, fingerprint: str, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse (with one line naming the folder and what to do) an output folder this run may not use. Reads only.

    Raises :class:`ConfigError` for a refused folder (not a folder, foreign contents, other config) and
    :class:`OutputError` when the folder cannot be created or written."""
    out = Path(out)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"output {out} exists and is not a folder")
        try:
            empty = not any(out.iterdir())
        except OSError as e:
            raise OutputError(f"cannot read output folder {out}: {e.strerror}") from None
        if not empty:
            marker = read_marker(out)
            if marker is None:
                raise ConfigError(f"output folder {out} is not empty and is not a qmap run folder (no results.json "
                                  f"with a run_id): refusing to write into it; pick another --out")
            if resume:
                if marker.get("config_fingerprint") != fingerprint:
                    raise ConfigError(f"--resume: {out} holds a run of a different config (fingerprint "
                                      f"{str(marker.get('config_fingerprint'))[:12]} vs {fingerprint[:12]}); use "
                                      f"the same config, another --out, or --overwrite")
            elif not overwrite:
                raise ConfigError(f"output folder {out} exists and is not empty: pass --overwrite (replace it) "
                                  f"or --resume (continue it)")
            elif foreign := foreign_entries(out):
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise ConfigError(f"--overwrite: {out} also holds {', '.join(foreign[:3])}{more}, which no qmap run "
                                  f"writes; refusing to delete it: move it out or pick another --out")
        if not writable(out):
            raise OutputError(f"output folder {out} is not writable")
        return
    parent = out.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"cannot create output folder {out}: {parent} is a dangling link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {out}: {parent} is not a folder")
    if not writable(parent):
        raise OutputError(f"cannot create output folder {out}: {parent} is not writable")


def _temporary(name: str) -> bool:
    """An atomic write's temporary (``.<name>.<random>.tmp``) or a write probe cut short by a kill."""
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".qmap-probe."))


def foreign_entries(folder: Path) -> list[str]:
    """Sorted names of the top-level entries of ``folder`` that no run writes (not in :data:`RUN_OUTPUTS`, not a
    temporary of a write cut short)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in RUN_OUTPUTS and not _temporary(p.name))


def check_inputs_outside(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse ``--overwrite`` into ``out`` when one of the run's inputs (``{what: path}``, None skipped: the
    config file, the checkpoint and its manifest, the data root, an image folder) lies inside it: clearing the
    folder would delete it. Reads only."""
    base = Path(out).resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve().is_relative_to(base):
            raise ConfigError(f"--overwrite would delete {what} {path}: it lies inside the output folder {out}; "
                              f"move it out or pick another --out")


class RunFolder:
    """An output folder held (locked) for one run.

    ::

        with RunFolder(out, fingerprint, overwrite=..., resume=...) as folder:  # checks, creates, locks
            ... load the inputs (nothing is written into the folder yet) ...
            results = folder.begin({"name": ..., "config": ...})   # clears (overwrite) and marks it "running"
            ... each stage: folder.save(results) ...
            folder.save(results, status="complete")

    Leaving the block with an exception before :meth:`begin` removes only the folders this object created
    (so a refused or failed start leaves nothing behind); after :meth:`begin` it records ``status: failed``
    and the error's first line in ``results.json`` (the partial results stay for ``--resume``). The lock is
    released on exit in every case.
    """

    def __init__(self, out: str | Path, fingerprint: str, overwrite: bool = False, resume: bool = False):
        self.out, self.fingerprint, self.overwrite, self.resume = Path(out), fingerprint, overwrite, resume
        self._fd: int | None = None
        self._created: Path | None = None  # the topmost folder this object created
        self.results: dict | None = None

    def __enter__(self) -> RunFolder:
        check_out_dir(self.out, self.fingerprint, self.overwrite, self.resume)
        self._create()
        try:
            self._fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"output folder {self.out} is in use by another qmap run (locked)") from None
            # Another run may have finished between the check and the lock: look again under the lock.
            check_out_dir(self.out, self.fingerprint, self.overwrite, self.resume)
            self._probe_write()
        except BaseException:
            self._release()
            self._remove_created()
            raise
        return self

    def _create(self) -> None:
        missing = []
        p = self.out
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {self.out}: {e.strerror}") from None
        self._created = missing[-1] if missing else None

    def _probe_write(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".qmap-probe.", dir=self.out)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise OutputError(f"output folder {self.out} is not writable: {e.strerror}") from None

    def begin(self, results: dict) -> dict:
        """Claim the folder for the run: with ``overwrite`` delete its old contents, with ``resume`` drop the
        temporaries of writes cut short and keep the ``run_id``; then write ``results.json`` with
        ``status: running``. Returns ``results`` with the marker fields added (the caller keeps updating it)."""
        old = read_marker(self.out)
        if self.resume:
            for tmp in self.out.rglob(".*.tmp"):  # temporaries of atomic writes cut short by a kill
                tmp.unlink()
        elif self.overwrite and old is not None:
            for child in self.out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        run_id = old["run_id"] if self.resume and old else uuid.uuid4().hex
        self.results = {"run_id": run_id, "status": "running", "config_fingerprint": self.fingerprint, **results}
        self._created = None  # from here on the folder is a run folder: never removed on failure
        self.save(self.results)
        return self.results

    def save(self, results: dict, status: str | None = None) -> None:
        """Write ``results`` (with ``status`` when given) atomically as the folder's ``results.json``."""
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown run status {status!r}")
            results["status"] = status
        try:
            atomic_write_json(self.out / MARKER, results)
        except OSError as e:
            raise OutputError(f"cannot write {self.out / MARKER}: {e.strerror}") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is not None:
                if self.results is not None:
                    self.results["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
                    try:
                        self.save(self.results, status="failed")
                    except OutputError:
                        pass  # the original error is the one to report
                else:
                    self._remove_created()
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def _remove_created(self) -> None:
        """Remove the folders this object created, if they are still empty."""
        if self._created is None:
            return
        p = self.out
        while True:
            try:
                p.rmdir()
            except OSError:
                return
            if p == self._created:
                return
            p = p.parent
