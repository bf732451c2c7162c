"""Network transforms that keep the function exact: BN fusion, graph lookup."""

from .fuse import fuse_bn, fuse_weights
from .graph import compute_layers, get_module, set_module

__all__ = ["compute_layers", "fuse_bn", "fuse_weights", "get_module", "set_module"]
