"""PTQ methods, each a transform ``apply(model, calib, qcfg, **options) -> MethodResult``, found by name."""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import MethodResult

# name -> module under qmap.methods exposing apply(); modules are imported on first use.
METHODS = {
    "rtn": "rtn",
    "alpha": "alpha",
    "adaround": "adaround",
    "brecq": "brecq",
    "qdrop": "qdrop",
    "ocs": "ocs",
    "domr": "domr",
}


def get_method(name: str):
    """The ``apply`` function of method ``name``."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    try:
        return importlib.import_module(f".{METHODS[name]}", __name__).apply
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{METHODS[name]}":
            raise ConfigError(f"method {name!r} is not available in this build") from None
        raise


__all__ = ["METHODS", "MethodResult", "get_method"]
