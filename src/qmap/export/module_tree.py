"""A model's module structure as plain JSON, and the model rebuilt from it (no pickle, no code from the file).

``module_tree(model)`` describes every submodule as ``{"type": name, "args": {...}, "children": {...}}``
with the constructor arguments of its type — so whatever a method changed in the structure (OMR/OCS channel
counts, OMR's ``Sequential(layer, OutlierShift)``, quantized layers in place of float ones, an unfused
``BatchNorm2d`` the method kept) is recorded. ``build_children(root, tree)`` replaces the children of a freshly
built root (registry model or user factory, which supplies the ``forward``) by modules built from the tree.
Only the types in ``BUILDERS`` are accepted: a tree naming anything else is refused. Tensors are not part of
the tree; load them afterwards with ``load_state_dict(strict=True)``.
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
    nn.ReLU: ("inplace",), nn.ReLU6: ("inplace",), nn.GELU: ("approximate",), nn.Dropout: ("p",),
    nn.Flatten: ("start_dim", "end_dim"), nn.Hardswish: (), nn.Hardsigmoid: (), nn.Sigmoid: (), nn.SiLU: (),
    nn.Identity: (), nn.Sequential: (),
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
            args = {"channels": len(m.index), "live": live}
        elif type(m) in BUILDERS:
            args = BUILDERS[type(m)][0](m)
        else:
            raise ConfigError(f"{path}: module type {kind} cannot be saved in the quantized-model format "
                              f"(supported: {', '.join(sorted([*BY_NAME, SHIFT]))})")
        return {"type": kind, "args": args,
                "children": {n: node(c, f"{path}.{n}" if path else n) for n, c in m.named_children()}}

    return {"type": type(model).__name__,
            "children": {n: node(c, n) for n, c in model.named_children()}}


def build_children(root: nn.Module, tree: dict) -> nn.Module:
    """Replace ``root``'s children by modules built from ``tree`` (from :func:`module_tree`); returns ``root``."""
    if type(root).__name__ != tree["type"]:
        raise ConfigError(f"the file describes a {tree['type']} but the architecture built is a "
                          f"{type(root).__name__}")
    shifts: list[tuple[OutlierShift, str | None]] = []

    def build(spec: dict, path: str) -> nn.Module:
        kind = spec.get("type")
        if kind not in BY_NAME and kind != SHIFT:
            raise ConfigError(f"{path}: module type {kind!r} is not allowed in a quantized-model file")
        a = spec.get("args", {})
        if kind == SHIFT:
            m = OutlierShift(torch.zeros(a["channels"], dtype=torch.long), x_clip=0.0)
            shifts.append((m, a["live"]))
        else:
            m = BY_NAME[kind][1](a)
        for name, child in spec.get("children", {}).items():
            m.add_module(name, build(child, f"{path}.{name}"))
        return m

    for name, child in tree["children"].items():
        setattr(root, name, build(child, name))
    for shift, live in shifts:
        if live is not None:
            shift.quantizer = [root.get_submodule(live)]
    return root
