"""A model's module structure as plain JSON, and the model rebuilt from it (no pickle, no code from the file).

``module_tree(model)`` describes every submodule as ``{"type": name, "args": {...}, "children": {...}}``
with the constructor arguments of its type — so whatever a method changed in the structure (OMR/OCS channel
counts, OMR's ``Sequential(layer, OutlierShift)``, quantized layers in place of float ones, an unfused
``BatchNorm2d`` the method kept) is recorded. ``build_children(root, tree)`` replaces the children of a freshly
built root (registry model or user factory, which supplies the ``forward``) by modules built from the tree.

A module whose type is not in ``BUILDERS`` — the root, and any block class of the model's own code (a ResNet's
``BasicBlock``, a MobileNet's ``InvertedResidual``, an ``nn.ModuleList``) — is recorded as *from the model*
(``"from_model": true``, no args): its forward is code, which the file never holds. On loading, the freshly
built model must have a module of that same type at that path; it is kept (with its non-module attributes as
the model's code set them) and its children are replaced from the tree, recursively, like the root's. Any other
type named in a file is refused. Tensors are not part of the tree; load them afterwards with
``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..errors import ConfigError
from ..methods.omr import OutlierShift
from ..quant import QuantConv2d, Quantizer, QuantLinear, QuantSpec


def _conv_args(m: nn.Conv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _linear_args(m: nn.Linear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _quantizer_args(q: Quantizer) -> dict:
    if type(q) is not Quantizer or q.observer is not None:
        raise ConfigError(f"quantizer {q.name}: only finished plain quantizers can be saved "
                          f"(got {type(q).__name__}{', still observing' if q.observer is not None else ''})")
    return {"spec": asdict(q.spec), "channels": q.scale.numel(), "ch_axis": q.ch_axis, "name": q.name,
            "auto_sign": q.auto_sign, "enabled": q.enabled, "decoupled": q.dequant_scale is not None}


def _make_quantizer(a: dict) -> Quantizer:
    spec = QuantSpec(**a["spec"])
    q = Quantizer(spec, channels=a["channels"], ch_axis=a["ch_axis"], name=a["name"], auto_sign=a["auto_sign"])
    q.enabled = a["enabled"]
    if a["decoupled"]:
        q.decouple()
    return q


_POOL = {
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AdaptiveAvgPool2d: ("output_size",), nn.AdaptiveMaxPool2d: ("output_size",),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.ReLU: ("inplace",), nn.ReLU6: ("inplace",), nn.GELU: ("approximate",), nn.Dropout: ("p",),
    nn.Flatten: ("start_dim", "end_dim"), nn.Hardswish: (), nn.Hardsigmoid: (), nn.Sigmoid: (), nn.SiLU: (),
    nn.Identity: (), nn.Sequential: (), nn.LeakyReLU: ("negative_slope", "inplace"), nn.ELU: ("alpha", "inplace"),
    nn.Tanh: (), nn.Softplus: ("beta", "threshold"), nn.Mish: ("inplace",),
    nn.Hardtanh: ("min_val", "max_val", "inplace"), nn.Softmax: ("dim",), nn.LogSoftmax: ("dim",),
    nn.PReLU: ("num_parameters",),
}
_FLOAT_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
               "padding_mode", "in_features", "out_features")


def _quant_layer(cls, base_args):
    def args(m):
        return base_args(m) | {"layer_name": m.layer_name}

    def make(a):
        m = cls(**{k: v for k, v in a.items() if k in _FLOAT_ARGS})
        m.layer_name = a["layer_name"]
        return m

    return args, make


# exact module type -> (constructor args of a module, module from those args); subclasses are not assumed alike
BUILDERS = {
    **{cls: (lambda m, k=keys: {n: getattr(m, n) for n in k}, lambda a, c=cls: c(**a)) for cls, keys in _POOL.items()},
    nn.Conv2d: (_conv_args, lambda a: nn.Conv2d(**a)),
    nn.Linear: (_linear_args, lambda a: nn.Linear(**a)),
    QuantConv2d: _quant_layer(QuantConv2d, _conv_args),
    QuantLinear: _quant_layer(QuantLinear, _linear_args),
    Quantizer: (_quantizer_args, _make_quantizer),
}
BY_NAME = {cls.__name__: entry for cls, entry in BUILDERS.items()}
SHIFT = OutlierShift.__name__  # args: index length, ``live`` = path of the quantizer whose clip it follows


def module_tree(model: nn.Module) -> dict:
    """The JSON-able structure of ``model`` (its root's type and every submodule's type/args/children)."""
    names = {id(m): n for n, m in model.named_modules()}

    def node(m: nn.Module, path: str) -> dict:
        kind = type(m).__name__
        if isinstance(m, OutlierShift):
            live = names.get(id(m.quantizer[0])) if m.quantizer else None
            if m.quantizer and live is None:
                raise ConfigError(f"{path}: OutlierShift follows a quantizer outside the model; cannot save it")
            args = {"channels": len(m.index), "live": live, "order": None if m.order is None else len(m.order)}
        elif type(m) in BUILDERS:
            args = BUILDERS[type(m)][0](m)
        else:
            return from_model(m, path)
        return {"type": kind, "args": args, "children": children(m, path)}

    def children(m: nn.Module, path: str) -> dict:
        return {n: node(c, f"{path}.{n}" if path else n) for n, c in m.named_children()}

    def from_model(m: nn.Module, path: str) -> dict:
        if isinstance(m, (Quantizer, QuantConv2d, QuantLinear)):  # a subclass: state the model code cannot rebuild
            raise ConfigError(f"{path}: module type {type(m).__name__} (a subclass of {type(m).__mro__[1].__name__})"
                              f" cannot be saved in the quantized-model format")
        return {"type": type(m).__name__, "from_model": True, "children": children(m, path)}

    return from_model(model, "")


# what a module's args may hold: integers (or lists of up to two) in these ranges; anything else in a file is
# damage or an attack, refused here rather than failing (or allocating) inside a later forward
_INT_ARGS = {"in_channels": (1, 1 << 20), "out_channels": (1, 1 << 20), "in_features": (1, 1 << 26),
             "out_features": (1, 1 << 26), "groups": (1, 1 << 20), "num_features": (1, 1 << 20),
             "num_parameters": (1, 1 << 20), "channels": (1, 1 << 26), "order": (1, 1 << 26),
             "kernel_size": (1, 64), "stride": (1, 64), "padding": (0, 64), "dilation": (1, 64),
             "output_size": (1, 4096), "ch_axis": (0, 1), "start_dim": (-8, 8), "end_dim": (-8, 8), "dim": (-8, 8)}


def _check_args(a, path: str) -> None:
    if not isinstance(a, dict):
        raise ConfigError(f"{path}: a module's args must be an object, got {type(a).__name__}")
    for key, (lo, hi) in _INT_ARGS.items():
        value = a.get(key)
        if value is None or (key == "padding" and value in ("same", "valid")):
            continue
        items = value if isinstance(value, list) else [value]
        if not 1 <= len(items) <= 2 or any(type(v) is not int or not lo <= v <= hi for v in items):
            raise ConfigError(f"{path}: {key} must be an integer (or two) in {lo}..{hi}, got {value!r}")


def build_children(root: nn.Module, tree: dict) -> nn.Module:
    """Replace ``root``'s children by modules built from ``tree`` (from :func:`module_tree`); returns ``root``."""
    shifts: list[tuple[OutlierShift, str | None]] = []

    def keep(model_m: nn.Module | None, spec: dict, path: str) -> nn.Module:
        """The model's own module at ``path``, its children replaced from ``spec``."""
        where = f"{path}: " if path else ""
        if model_m is None or type(model_m).__name__ != spec.get("type"):
            got = "nothing" if model_m is None else f"a {type(model_m).__name__}"
            raise ConfigError(f"{where}the file describes a {spec.get('type')} from the model's own code, but the "
                              f"architecture built has {got} there")
        old = dict(model_m.named_children())
        for name in old:
            if name not in spec.get("children", {}):
                delattr(model_m, name)
        for name, child in spec.get("children", {}).items():
            setattr(model_m, name, build(old.get(name), child, f"{path}.{name}" if path else name))
        return model_m

    def build(model_m: nn.Module | None, spec: dict, path: str) -> nn.Module:
        """The module ``spec`` describes; ``model_m`` is what the freshly built model has at ``path`` (or None)."""
        kind = spec.get("type")
        if spec.get("from_model") is True:
            return keep(model_m, spec, path)
        if kind not in BY_NAME and kind != SHIFT:
            raise ConfigError(f"{path}: module type {kind!r} is not allowed in a quantized-model file")
        a = spec.get("args", {})
        _check_args(a, path)
        if kind == SHIFT:
            n = a.get("order")
            if n is not None and (type(n) is not int or n <= 0):
                raise ConfigError(f"{path}: an OutlierShift's order must be a channel count, got {n!r}")
            order = torch.zeros(n, dtype=torch.long) if n else None
            m = OutlierShift(torch.zeros(a["channels"], dtype=torch.long), x_clip=0.0, order=order)
            shifts.append((m, a["live"]))
        else:
            m = BY_NAME[kind][1](a)
        own = dict(model_m.named_children()) if model_m is not None else {}  # for the model's blocks further down
        for name, child in spec.get("children", {}).items():
            m.add_module(name, build(own.get(name), child, f"{path}.{name}"))
        return m

    keep(root, {**tree, "from_model": True}, "")
    for shift, live in shifts:
        if live is not None:
            shift.quantizer = [root.get_submodule(live)]
    return root
