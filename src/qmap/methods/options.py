"""Typed method options: each method module declares ``Options``, a dataclass of what ``method.options`` may
hold (names, types, defaults). A method whose options are its ``apply`` keywords declares
``Options = signature_options(apply)``, so the dataclass and the signature cannot drift apart."""

from __future__ import annotations

import inspect
import typing
from dataclasses import field, make_dataclass


def signature_options(fn, skip: tuple[str, ...] = ("model", "calib", "qcfg")) -> type:
    """A dataclass with one field per keyword parameter of ``fn`` (not in ``skip``, not ``*args``/``**kw``),
    typed by its annotation and defaulting to its default."""
    hints = typing.get_type_hints(fn)
    specs = []
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        default = p.default
        value = field(default_factory=lambda d=default: type(d)(d)) if isinstance(default, (list, dict)) \
            else field(default=default)
        specs.append((name, hints.get(name, typing.Any), value))
    qualname = f"{fn.__module__.rsplit('.', 1)[-1]}.Options"
    return make_dataclass("Options", specs, namespace={"__doc__": f"Keywords of {qualname}'s {fn.__name__}."})
