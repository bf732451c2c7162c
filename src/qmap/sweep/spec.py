"""Sweep files: one base run config plus axes, expanded into points (each point one ordinary run config).

A sweep file (YAML or JSON)::

    name: ptq_methods                  # default: the file's stem; output folder default: runs/sweeps/<name>
    base: ../domr_w4a4.yaml            # a run config file (relative to this file) or an inline run config
    set: {data.test_limit: 1000}       # optional overrides of the base (dotted keys, as ``qmap run --set``)
    axes:                              # the grid: every combination of one level per axis
      bits:                            #   named levels: label -> the keys that level sets
        W4A4: {quant.w_bits: 4, quant.a_bits: 4}
        W2A2: {quant.w_bits: 2, quant.a_bits: 2}
      method.name: [rtn, adaround]     #   a list: the axis name is the config key, each value one level
      seed: [0, 1, 2]
    resources: {num_cpus: 1, num_gpus: 0, memory_mb: 3000}   # what one point asks Ray for
    max_retries: 3                     # how often Ray reruns a point whose worker process died
    report: {x: bits, repeat: seed}    # the bit-width axis and the repetition axis of the report

The points are the Cartesian product of the axes' levels, the first axis varying slowest. A point's config is
the base, then ``set``, then each axis's level in the order the axes are written (a later key wins), checked
like any run config (an unknown key is an error naming the point). A point is named by its levels' labels
joined with ``-`` (``W4A4-rtn-seed0``); a list level's label is the value itself for a string and the key's
last part followed by the value otherwise (``seed0``). Labels may hold letters, digits and ``. _ + -``.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, config_from_dict, expand_config_dir, load_config, parse_config_text
from ..errors import ConfigError, reject_unknown_keys
from ..io import file_problem

SWEEP_KEYS = {"name", "base", "set", "axes", "resources", "max_retries", "report"}
LABEL = re.compile(r"[A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Resources:
    """What one point asks Ray for: CPUs (also its torch threads), GPUs, memory (MiB; None: not scheduled on)."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory_mb: int | None = None

    def ray_options(self) -> dict:
        opts = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_mb is not None:
            opts["memory"] = int(self.memory_mb) * 2**20
        return opts


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its name, the label of its level on every axis, and its run config."""

    name: str
    labels: dict[str, str]
    config: RunConfig


@dataclass
class Sweep:
    name: str
    source: str
    axes: dict[str, list[str]]  # axis -> level labels, in file order
    points: list[Point]
    resources: Resources = field(default_factory=Resources)
    max_retries: int = 3
    x_axis: str | None = None  # the report's bit-width axis
    repeat_axis: str | None = None  # the report's repetition (spread) axis


def _read_mapping(path: Path) -> dict:
    if problem := file_problem(path):
        raise ConfigError(f"sweep file {path}: {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read sweep file {path}: {getattr(e, 'strerror', None) or e}") from None
    d = parse_config_text(text, path.suffix != ".json", str(path))  # the run config's size/alias/depth limits
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with 'base' and 'axes'")
    return expand_config_dir(d, path)


def set_key(d: dict, dotted: str, value: Any, where: str) -> None:
    """Set ``a.b.c`` in a nested config dict (mappings on the way are created only inside free-form dicts such as
    ``method.options``; the run config's own check rejects keys that do not exist)."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {dotted}: {p!r} is not a section")
        d = nxt
    d[parts[-1]] = copy.deepcopy(value)


def _levels(axis: str, spec: Any, where: str) -> list[tuple[str, dict]]:
    """(label, {dotted key: value}) for every level of one axis."""
    if isinstance(spec, list) and spec:
        last = axis.split(".")[-1]
        levels = [(v if isinstance(v, str) else f"{last}{v}", {axis: v}) for v in spec]
    elif isinstance(spec, dict) and spec:
        levels = []
        for label, sets in spec.items():
            if not isinstance(sets, dict) or not sets:
                raise ConfigError(f"{where}: axis {axis}: level {label!r} must map config keys to values")
            levels.append((str(label), sets))
    else:
        raise ConfigError(f"{where}: axis {axis}: give a non-empty list of values or a mapping of named levels")
    labels = [lab for lab, _ in levels]
    for lab in labels:
        if not LABEL.fullmatch(lab):
            raise ConfigError(f"{where}: axis {axis}: level label {lab!r} may only hold letters, digits and ._+- "
                              f"(name the levels: {axis}: {{label: {{key: value}}}})")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: axis {axis}: level labels repeat: {labels}")
    return levels


def _resources(d: Any, where: str) -> Resources:
    if d is None:
        return Resources()
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: resources: expected a mapping")
    reject_unknown_keys(d, {"num_cpus", "num_gpus", "memory_mb"}, f"key(s) in {where}: resources")
    for key, value in d.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{where}: resources.{key}: expected a number >= 0, got {value!r}")
    if d.get("num_cpus", 1) <= 0:
        raise ConfigError(f"{where}: resources.num_cpus must be > 0")
    return Resources(**d)


def _base(d: dict, path: Path) -> dict:
    base = d.get("base")
    if isinstance(base, str):
        cfg = load_config(path.parent / base)
    elif isinstance(base, dict):
        cfg = config_from_dict(base, source=f"{path}: base")
    else:
        raise ConfigError(f"{path}: 'base' must be a run config file name or an inline run config")
    return cfg.to_dict()


def load_sweep(path: str | Path, sets: list[tuple[str, Any]] = (), only: dict[str, list[str]] | None = None,
               name: str | None = None) -> Sweep:
    """Read and expand a sweep file; every point's config is checked here, before anything runs.

    ``sets``: extra overrides applied after the file's ``set`` (``qmap sweep --set``); ``only``: keep only these
    level labels of these axes (``--only method=rtn,domr``); ``name``: replaces the file's name."""
    path = Path(path)
    d = _read_mapping(path)
    where = str(path)
    reject_unknown_keys(d, SWEEP_KEYS, f"key(s) in {where}")
    base = _base(d, path)
    file_sets = d.get("set") or {}
    if not isinstance(file_sets, dict):
        raise ConfigError(f"{where}: 'set' must map dotted config keys to values")
    for key, value in [*file_sets.items(), *sets]:
        set_key(base, key, value, f"{where}: set")
    axes_spec = d.get("axes")
    if not isinstance(axes_spec, dict) or not axes_spec:
        raise ConfigError(f"{where}: 'axes' must be a non-empty mapping of axis -> levels")
    axes = {str(a): _levels(str(a), spec, where) for a, spec in axes_spec.items()}
    for axis, keep in (only or {}).items():
        if axis not in axes:
            raise ConfigError(f"--only {axis}: no such axis; axes: {', '.join(axes)}")
        known = [lab for lab, _ in axes[axis]]
        reject_unknown_keys(keep, known, f"level(s) of axis {axis} in --only")
        axes[axis] = [lv for lv in axes[axis] if lv[0] in keep]
    points = []
    for combo in itertools.product(*axes.values()):
        point_name = "-".join(lab for lab, _ in combo)
        cfg = copy.deepcopy(base)
        for axis, (_, level_sets) in zip(axes, combo):
            for key, value in level_sets.items():
                set_key(cfg, key, value, f"{where}: axis {axis}")
        cfg["name"] = point_name
        points.append(Point(point_name, {a: lab for a, (lab, _) in zip(axes, combo)},
                            config_from_dict(cfg, source=f"{where}: point {point_name}")))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: labels joined with '-' give the same point name twice: rename levels")
    report = d.get("report") or {}
    if not isinstance(report, dict):
        raise ConfigError(f"{where}: report: expected a mapping")
    reject_unknown_keys(report, {"x", "repeat"}, f"key(s) in {where}: report")
    roles = {role: report.get(role, default if default in axes else None)
             for role, default in (("x", "bits"), ("repeat", "seed"))}
    for role, axis in roles.items():
        if axis is not None and axis not in axes:
            raise ConfigError(f"{where}: report.{role}: no axis {axis!r}; axes: {', '.join(axes)}")
    max_retries = d.get("max_retries", 3)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"{where}: max_retries: expected an integer >= 0, got {max_retries!r}")
    sweep_name = name or str(d.get("name") or path.stem)
    if not LABEL.fullmatch(sweep_name):
        raise ConfigError(f"{where}: name {sweep_name!r} may only hold letters, digits and ._+-")
    return Sweep(name=sweep_name, source=str(path), axes={a: [lab for lab, _ in lv] for a, lv in axes.items()},
                 points=points, resources=_resources(d.get("resources"), where), max_retries=max_retries,
                 x_axis=roles["x"], repeat_axis=roles["repeat"])
