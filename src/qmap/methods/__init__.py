"""PTQ methods, each a transform ``apply(model, calib, qcfg, **options) -> MethodResult``, found by name.

Each method module also declares ``Options``: the dataclass of the options it accepts (``method.options`` in a
run config), which :func:`method_options` returns so the config check can validate them before any work.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import MethodResult

# name -> module under qmap.methods exposing apply() and Options; modules are imported on first use.
METHODS = {
    "rtn": "rtn",
    "alpha": "alpha",
    "adaround": "adaround",
    "brecq": "brecq",
    "qdrop": "qdrop",
    "ocs": "ocs",
    "domr": "domr",
}


def _module(name: str):
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    try:
        return importlib.import_module(f".{METHODS[name]}", __name__)
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{METHODS[name]}":
            raise ConfigError(f"method {name!r} is not available in this build") from None
        raise


def get_method(name: str):
    """The ``apply`` function of method ``name``."""
    return _module(name).apply


def method_options(name: str) -> type:
    """The options dataclass of method ``name`` (its fields: the keys ``method.options`` may hold)."""
    return _module(name).Options


__all__ = ["METHODS", "MethodResult", "get_method", "method_options"]
