"""Run configuration: dataclasses loaded from YAML/JSON, with an error naming every unknown key.

A run config has the sections ``model``, ``data``, ``quant`` (a :class:`~qmap.quant.QuantConfig`),
``method``, ``hardware``, ``export`` and ``report``; everything has a default except the model. Paths may
start with ``{data}/`` to point inside the data root (``--data`` / ``QMAP_DATA`` / config file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, QmapError, reject_unknown_keys
from .hw.spec import ArraySpec
from .quant import QuantConfig


@dataclass
class ModelConfig:
    checkpoint: str
    arch: str | None = None
    width: float | None = None


@dataclass
class DataConfig:
    root: str | None = None
    calib_size: int = 1024
    calib_seed: int = 0
    test_split: str = "test"
    test_limit: int | None = None
    batch_size: int = 256


@dataclass
class MethodConfig:
    name: str = "rtn"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HardwareConfig:
    enabled: bool = True
    target_layers: list[str] = field(default_factory=list)
    images: list[int] = field(default_factory=lambda: [0])
    array: ArraySpec = field(default_factory=ArraySpec)
    rtl: str = "auto"  # auto | icarus | verilator | none
    network_cycles: bool = True
    rtl_network: bool = False  # every array layer of images[0] on one build of the Verilog core


@dataclass
class ExportConfig:
    onnx: bool = False
    quantized_model: bool = True


@dataclass
class RunConfig:
    model: ModelConfig
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# Which keys of a section hold a nested section.
_NESTED = {
    RunConfig: {"model": ModelConfig, "data": DataConfig, "quant": QuantConfig, "method": MethodConfig,
                "hardware": HardwareConfig, "export": ExportConfig},
    HardwareConfig: {"array": ArraySpec},
}


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    if cls is QuantConfig:
        try:
            return QuantConfig.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    reject_unknown_keys(d, {f.name for f in fields(cls)}, f"key(s) in {where}")
    nested = _NESTED.get(cls, {})
    kwargs = {k: _build(nested[k], v, f"{where}.{k}") if k in nested else v for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    except QmapError as e:  # a section's own validation (e.g. the array's bit widths)
        raise ConfigError(f"{where}: {e}") from None


def config_from_dict(d: dict, source: str = "config") -> RunConfig:
    if "model" not in d:
        raise ConfigError(f"{source}: the 'model' section (with a checkpoint) is required")
    return _build(RunConfig, d, source)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON run config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml
            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
    except Exception as e:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
    return config_from_dict(d, source=str(p))


def set_dotted(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Apply one ``section.key=value`` override (from ``--set``), checking the key exists."""
    obj: Any = cfg
    parent, attr = None, None
    parts = dotted.split(".")
    for p in parts[:-1]:
        if isinstance(obj, dict):
            obj = obj.setdefault(p, {})
        elif is_dataclass(obj) and hasattr(obj, p):
            parent, attr, obj = obj, p, getattr(obj, p)
        else:
            raise ConfigError(f"--set {dotted}: no section {p!r}")
    last = parts[-1]
    if isinstance(obj, dict):
        obj[last] = value
    elif is_dataclass(obj) and last in {f.name for f in fields(obj)}:
        if obj.__dataclass_params__.frozen:  # e.g. the ArraySpec: validated on construction, replaced whole
            try:
                setattr(parent, attr, replace(obj, **{last: value}))
            except QmapError as e:
                raise ConfigError(f"--set {dotted}: {e}") from None
        else:
            setattr(obj, last, value)
            if isinstance(obj, QuantConfig):
                obj.__post_init__()
    else:
        raise ConfigError(f"--set {dotted}: unknown key {last!r}")


def resolve_path(path: str, data_root: Path | None) -> Path:
    """Expand a leading ``{data}`` to the data root."""
    if path.startswith("{data}"):
        if data_root is None:
            raise ConfigError(f"path {path!r} needs a data root: pass --data or set QMAP_DATA")
        return data_root / path[len("{data}"):].lstrip("/")
    return Path(path)
