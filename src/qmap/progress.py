"""Stage progress for long jobs: ``[i/n] name ...`` lines with elapsed time, logged at INFO level on the
``qmap`` logger (the CLI sends it to stderr; ``quiet`` silences them); inner loops use tqdm bars (ETA
included) on stderr that the same flag disables."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("qmap")


class Stages:
    def __init__(self, names: list[str], quiet: bool = False):
        self.names = names
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self.t_start = time.perf_counter()

    def _say(self, msg: str) -> None:
        if not self.quiet:
            log.info(msg)

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        i = self.names.index(name) + 1 if name in self.names else len(self.timings) + 1
        self._say(f"[{i}/{len(self.names)}] {name}{(' — ' + detail) if detail else ''} ...")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings[name] = self.timings.get(name, 0.0) + dt
        total = time.perf_counter() - self.t_start
        self._say(f"[{i}/{len(self.names)}] {name} done in {dt:.1f} s (total {total:.0f} s)")

    def note(self, msg: str) -> None:
        self._say(f"      {msg}")


_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (``--quiet``)."""
    global _quiet
    _quiet = quiet


def bar(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm progress bar on stderr (with ETA) around ``iterable``, off under ``set_quiet(True)``."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr, disable=_quiet,
                dynamic_ncols=True)
