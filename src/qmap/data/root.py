"""Where the datasets live: ``--data`` argument > ``QMAP_DATA`` environment variable > config file key ``data``.

Config files, first found wins: ``./qmap.yaml``, then ``$XDG_CONFIG_HOME/qmap/config.yaml``
(default ``~/.config/qmap/config.yaml``). A relative ``data:`` path in a config file is taken relative to
that file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import ConfigError, DataError

ENV_VAR = "QMAP_DATA"


def config_files() -> list[Path]:
    """Config files searched for a ``data:`` key, in priority order."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path.cwd() / "qmap.yaml", xdg / "qmap" / "config.yaml"]


def _data_from_config(path: Path) -> Path | None:
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping (e.g. 'data: /path/to/data')")
    value = cfg.get("data")
    return None if value is None else (path.parent / Path(str(value)).expanduser())


def resolve_data_root(arg: str | Path | None = None) -> Path:
    """Return the data root folder, or raise :class:`DataError` listing every place that was looked at."""
    looked: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if arg is not None:
        candidates.append(("--data", Path(arg).expanduser()))
    else:
        looked.append("--data: not given")
    if os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    else:
        looked.append(f"${ENV_VAR}: not set")
    for cfg in config_files():
        if cfg.is_file():
            found = _data_from_config(cfg)
            if found is not None:
                candidates.append((f"config {cfg}", found))
            else:
                looked.append(f"config {cfg}: no 'data' key")
        else:
            looked.append(f"config {cfg}: absent")
    if candidates:
        origin, path = candidates[0]  # the highest-priority setting decides; a wrong one is an error, not skipped
        if path.is_dir():
            return path.resolve()
        raise DataError(f"data root {path} (from {origin}) is not a folder; fix it or point --data / ${ENV_VAR} "
                        f"to the folder holding cifar10-jpeg-q75/ or cifar-10-batches-py/")
    raise DataError("no data root given; looked at " + "; ".join(looked) + f". Pass --data DIR, set ${ENV_VAR}, "
                    "or put 'data: DIR' in qmap.yaml")
