"""Value rules shared by every typed settings object (run config sections, :class:`~qmap.train.TrainConfig`):
a numeric range with open or closed ends, a choice among values, a regular expression. Each ``check`` raises one
:class:`~qmap.errors.ConfigError` line naming the setting and what is allowed, and nothing else."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Numbers between ``lo`` and ``hi`` (``None``: unbounded on that side); an end is excluded when its
    ``*_open`` flag is set (``Range(0, 1, lo_open=True, hi_open=True)`` is (0, 1)). NaN and ±inf are never in
    range — NaN fails every comparison, so without this check it would pass any bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value, where: str) -> None:
        if value is None:
            return
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if below or above or not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is out of range; allowed: {self.describe()}")

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        if not (self.lo_open or self.hi_open):
            return f"{self.lo}..{self.hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def check(self, value, where: str) -> None:
        if value is not None and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(str, self.choices))}")


@dataclass(frozen=True)
class Pattern:
    regex: str
    meaning: str

    def check(self, value, where: str) -> None:
        if value is not None and not re.fullmatch(self.regex, value):
            raise ConfigError(f"{where}: {value!r} is not allowed; expected {self.meaning}")
