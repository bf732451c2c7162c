"""The model as one traced graph (:class:`ModelGraph`) and the transforms that keep its function exact (BN fusion)."""

from .fuse import fuse_bn, fuse_weights
from .graph import get_module, set_module
from .model_graph import Chain, ModelGraph, downsamples, require_module
from .ops import SUPPORTED

__all__ = ["SUPPORTED", "Chain", "ModelGraph", "downsamples", "fuse_bn", "fuse_weights", "get_module", "require_module",
           "set_module"]
