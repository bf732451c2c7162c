"""Run configuration: dataclasses loaded from YAML/JSON and checked from their type annotations.

A run config has the sections ``model``, ``data``, ``quant`` (a :class:`~qmap.quant.QuantConfig`),
``method``, ``hardware`` (with ``array``, an :class:`~qmap.hw.spec.ArraySpec`) and ``export``; everything has
a default except the model. Paths may start with ``{data}/`` to point inside the data root (``--data`` /
``QMAP_DATA`` / config file), and any string in a config file may start with ``{config}/``, which is replaced
on loading by the folder of that file — a config shipped beside its checkpoint works from any directory.

Validation is generic: :func:`build_section` checks every value against its field's annotation (``int`` is
not ``bool`` nor ``3.5``, ``bool`` is only ``true``/``false``, ``str`` is not a list, ``list[str]`` is not a
string, ``int | None``, ``dict[str, T]``, ``tuple[int, int]``, nested dataclasses), so a field added to any
section later is checked without more code. :data:`CONSTRAINTS` adds ranges and choices by dotted key; the
sections' own ``__post_init__`` checks run last. Every error is one line naming the key and what is allowed.
YAML is read with limits on file size, alias count and expanded size (no "billion laughs").
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, QmapError, reject_unknown_keys
from .hw.spec import MAX_ARRAY_DIM, ArraySpec
from .io import file_problem
from .quant import QuantConfig
from .rules import OneOf, Pattern, Range


@dataclass
class ModelConfig:
    """The model: a checkpoint (safetensors or a torch state_dict) and, where no JSON manifest beside it says so,
    what to build — ``arch`` a registry name or the user's ``package.module:factory`` —, its class count, the
    input normalisation ``mean``/``std`` (per RGB channel, on 0..1 pixels) and the input shape ``[3, H, W]``
    (images are resized to H x W). Given values override the manifest's."""
    checkpoint: str
    arch: str | None = None
    width: float | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    input_shape: list[int] | None = None

    def __post_init__(self):
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None and len(v) != 3:
                raise ConfigError(f"model.{key}: expected 3 numbers (one per RGB channel), got {len(v)}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"model.std: every value must be > 0, got {self.std}")
        if self.input_shape is not None and (len(self.input_shape) != 3 or self.input_shape[0] != 3):
            raise ConfigError(f"model.input_shape: expected [3, H, W] (RGB images), got {self.input_shape}")

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of ``input_shape``, or None."""
        return tuple(self.input_shape[1:]) if self.input_shape else None


@dataclass
class DataConfig:
    """``folder``: an image-folder dataset ``ROOT/{train,val|test}/<class>/*`` (or a tar of one) instead of
    CIFAR-10; ``{data}/`` at its start points inside the data root."""
    root: str | None = None
    folder: str | None = None
    calib_size: int = 1024
    calib_seed: int = 0
    test_split: str = "test"
    test_limit: int | None = None  # None: the whole split
    batch_size: int = 256


@dataclass
class MethodConfig:
    name: str = "rtn"
    options: dict[str, Any] = field(default_factory=dict)  # checked against the method's Options dataclass


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


BITS = Range(2, 8)
# Per-field ranges and choices by dotted key (types come from the annotations). Keys of the sections owned by
# other modules are listed too, so the message names the key and the allowed values before construction.
CONSTRAINTS: dict[str, Range | OneOf | Pattern] = {
    "name": Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", "a plain folder name (letters, digits, _ . + -; "
                                                          "no '/', no leading '.')"),
    "seed": Range(0, 2**32 - 1),
    "device": Pattern(r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:N or mps"),
    "model.width": Range(0.01, 16),
    "model.num_classes": Range(1, 100_000),
    "model.input_shape": Range(1, 4096),
    "model.std": Range(0, None, lo_open=True),
    "data.calib_size": Range(1, 1_000_000),
    "data.calib_seed": Range(0, 2**32 - 1),
    "data.test_split": OneOf(("test", "test_exact", "train", "train_exact")),
    "data.test_limit": Range(1, None),
    "data.batch_size": Range(1, 65536),
    "quant.w_bits": BITS,
    "quant.a_bits": BITS,
    "quant.first_last_bits": BITS,
    "quant.w_observer": OneOf(("minmax", "percentile", "mse")),
    "quant.a_observer": OneOf(("minmax", "percentile", "mse")),
    "quant.rounding": OneOf(("half_even", "half_away")),
    "quant.layer_bits.*": BITS,
    "hardware.images": Range(0, None),
    "hardware.rtl": OneOf(("auto", "icarus", "verilator", "none")),
    "hardware.array.rows": Range(1, MAX_ARRAY_DIM),
    "hardware.array.cols": Range(1, MAX_ARRAY_DIM),
    "hardware.array.w_bits": BITS,
    "hardware.array.a_bits": BITS,
    "hardware.array.psum_bits": Range(8, 48),
    "hardware.array.dataflow": OneOf(("ws", "os")),
    # method.options (the methods' Options dataclasses give the types; tests/hostile checks these tuples
    # against the methods' own constants)
    "method.options.batch_size": Range(1, 65536),
    "method.options.iters": Range(0, None),
    "method.options.granularity": OneOf(("layer", "block", "network")),
    "method.options.drop_prob": Range(0, 1),
    # the reconstruction methods' numbers: a negative learning rate would ascend the loss, a warm-up beyond 1
    # never switch the regulariser on, a negative seed fail deep inside torch
    **{f"method.options.{k}": Range(0, None) for k in ("lr_rounding", "lr_act_step", "lr_weight_step", "round_weight",
                                                       "beta_start", "beta_end", "eval_samples", "memory_limit_mb",
                                                       "checkpoint_every")},
    "method.options.warmup": Range(0, 1),
    "method.options.seed": Range(0, 2**32 - 1),
    "method.options.criterion": OneOf(("output_mse", "weight_mse")),
    "method.options.fixed_grid": OneOf(("initial", "pow2")),
    "method.options.points": Range(2, 100_000),
    "method.options.search_images": Range(1, None),
    "method.options.refine_iters": Range(0, 10_000),
    "method.options.target": OneOf(("weight", "activation", "both")),
    "method.options.expand_ratio": Range(0, 1),
    "method.options.omr_options.form": OneOf(("auto", "bias", "shift")),
    "method.options.omr_options.budget_scope": OneOf(("pair", "global")),
    "method.options.omr_options.budget": Range(0, 1),
}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin is not None:
        args = typing.get_args(tp)
        if origin is list:
            return f"a list of {_type_name(args[0])}"
        if origin is dict:
            return f"a mapping of {_type_name(args[1])}"
        if origin is tuple and args and args[-1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        if origin is tuple:
            return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
        if origin is typing.Literal:
            return "one of " + ", ".join(map(repr, args))
    if is_dataclass(tp):
        return "a mapping (section)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, tp.__name__)


def _constraint(where: str):
    """The constraint of a dotted key; list items share their list's key, mapping values ``<key>.*``."""
    key = re.sub(r"\[\d+\]", "", where)
    return CONSTRAINTS.get(key) or CONSTRAINTS.get(re.sub(r"\.[^.]+$", ".*", key))


def coerce(value: Any, tp, where: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``: tuples from lists, floats from ints,
    nested dataclasses from mappings. Raises :class:`ConfigError` naming ``where`` and what is allowed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:  # X | None: X's own message (a range, a nested key), not just the type
            return coerce(value, alternatives[0], where)
        for a in alternatives:
            try:
                return coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    if is_dataclass(tp):
        return build_section(tp, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {_show(value)} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args and args[-1] is not Ellipsis and len(value) != len(args)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
        item_types = [args[0]] * len(value) if args and args[-1] is Ellipsis else args
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, got {_show(k)}")
            out[k] = coerce(v, args[1], f"{where}.{k}")
        return out
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
            and abs(value) != float("inf")
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
    if not ok:
        rule = _constraint(where)
        allowed = f" ({rule.describe()})" if isinstance(rule, Range) else \
            f" (one of {', '.join(map(str, rule.choices))})" if isinstance(rule, OneOf) else ""
        raise ConfigError(f"{where}: expected {_type_name(tp)}{allowed}, got {_show(value)}")
    if (rule := _constraint(where)) is not None:
        rule.check(value, where)
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def build_section(cls, d: Any, where: str = ""):
    """Construct dataclass ``cls`` from mapping ``d`` found at dotted key ``where`` ("" for a whole run
    config): unknown keys named, every value typed and range-checked, then the class's own checks."""
    if isinstance(d, cls):
        d = asdict(d)
    what = where or "the config"
    if not isinstance(d, dict):
        raise ConfigError(f"{what}: expected a mapping (section), got {_show(d)}")
    known = {f.name: f for f in fields(cls)}
    reject_unknown_keys(d, known, f"key(s) in {what}")
    missing = [n for n, f in known.items() if n not in d and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{what}: missing required key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except QmapError as e:  # a section's own validation (e.g. the array's bit widths)
        raise ConfigError(f"{what}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from None


def config_from_dict(d: Any, source: str = "config") -> RunConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a run config must be a mapping of sections, got {_show(d)}")
    if "model" not in d:
        raise ConfigError(f"{source}: the 'model' section (with a checkpoint) is required (in the file, or "
                          "'qmap run CONFIG --checkpoint FILE')")
    try:
        return build_section(RunConfig, d)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


MAX_CONFIG_BYTES = 1 << 20      # a run config is a few hundred bytes; refuse anything over 1 MiB
MAX_YAML_ALIASES = 100          # anchors are fine; alias bombs are not
MAX_EXPANDED_NODES = 100_000    # values after expanding every alias
MAX_DEPTH = 32


def _safe_yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases (an alias bomb?)")
            return super().compose_node(parent, index)

    Loader.aliases = 0
    return Loader


def check_size(obj: Any, source: str) -> None:
    """Refuse a parsed config deeper than :data:`MAX_DEPTH` or with more than :data:`MAX_EXPANDED_NODES`
    values once aliases are expanded (each shared node counted as often as it is referenced)."""
    sizes: dict[int, int] = {}

    def size(o, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if not isinstance(o, (dict, list, tuple)):
            return 1
        if id(o) in sizes:
            return sizes[id(o)]
        items = list(o.keys()) + list(o.values()) if isinstance(o, dict) else list(o)
        n = 1 + sum(size(v, depth + 1) for v in items)
        if n > MAX_EXPANDED_NODES:
            raise ConfigError(f"{source}: more than {MAX_EXPANDED_NODES:,} values once YAML aliases are expanded "
                              f"(an alias bomb?)")
        sizes[id(o)] = n
        return n

    size(obj, 0)


def parse_config_text(text: str, yaml_syntax: bool, source: str) -> Any:
    """Parse config text (YAML or JSON) with the size, alias and depth limits."""
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES >> 10} KiB; a run config is a few lines")
    try:
        if yaml_syntax:
            import yaml
            d = yaml.load(text, Loader=_safe_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        else:
            d = json.loads(text)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"cannot parse {source}: {' '.join(str(e).split())[:200]}") from None
    check_size(d, source)
    return d


def load_config(path: str | Path, checkpoint: str | None = None) -> RunConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON run config. ``checkpoint`` (``qmap run CONFIG -c FILE``) stands
    in for a missing ``model`` section; one the file has is overridden later like any other flag."""
    p = Path(path)
    if problem := file_problem(p):
        raise ConfigError(f"config file {p}: {problem}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES >> 10} KiB; a run config is a few lines")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {getattr(e, 'strerror', None) or e}") from None
    d = parse_config_text(text, p.suffix != ".json", str(p))
    d = {} if d is None else d
    if checkpoint is not None and isinstance(d, dict) and "model" not in d:
        d = {**d, "model": {"checkpoint": checkpoint}}
    return config_from_dict(expand_config_dir(d, p), source=str(p))


CONFIG_DIR = "{config}"


def expand_config_dir(d: Any, path: Path) -> Any:
    """``d`` with every string that starts with ``{config}`` rebased on the absolute folder of the config file
    ``path`` (``{config}/../x.safetensors`` → ``/abs/folder/../x.safetensors``); other values unchanged."""
    if isinstance(d, str):
        return str(path.resolve().parent) + d[len(CONFIG_DIR):] if d.startswith(CONFIG_DIR) else d
    if isinstance(d, dict):
        return {k: expand_config_dir(v, path) for k, v in d.items()}
    if isinstance(d, list):
        return [expand_config_dir(v, path) for v in d]
    return d


def parse_value(text: str, where: str) -> Any:
    """A ``--set`` value: YAML scalar/flow syntax (``4``, ``true``, ``[a, b]``, ``{k: 1}``), with the limits."""
    return parse_config_text(text, True, where)


def set_dotted(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Apply one ``section.key=value`` override (from ``--set``): the key must exist (any key below a mapping
    field such as ``method.options``), and the whole config is re-validated with the new value."""
    d = cfg.to_dict()
    node: Any = d
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}: malformed key")
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or (p not in node and not _is_free_mapping(parts[:i])):
            raise ConfigError(f"--set {dotted}: no section {'.'.join(parts[:i + 1])!r}")
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:i + 1])} is not a section")
    if parts[-1] not in node and not _is_free_mapping(parts[:-1]):
        raise ConfigError(f"--set {dotted}: unknown key {parts[-1]!r}; known: {', '.join(sorted(node))}")
    node[parts[-1]] = value
    new = config_from_dict(d, source=f"--set {dotted}")
    for f in fields(cfg):
        setattr(cfg, f.name, getattr(new, f.name))


def _is_free_mapping(path: list[str]) -> bool:
    """True when ``path`` names a ``dict`` field (its keys are free, e.g. ``method.options``)."""
    tp: Any = RunConfig
    for p in path:
        if not is_dataclass(tp):
            return typing.get_origin(tp) is dict
        hints = typing.get_type_hints(tp)
        if p not in hints:
            return False
        tp = hints[p]
    return typing.get_origin(tp) is dict


def resolve_path(path: str, data_root: Path | None) -> Path:
    """Expand a leading ``{data}`` to the data root."""
    if path.startswith("{data}"):
        if data_root is None:
            raise ConfigError(f"path {path!r} needs a data root: pass --data or set QMAP_DATA")
        return data_root / path[len("{data}"):].lstrip("/")
    return Path(path)
