"""Model registry and checkpoint I/O."""

from .checkpoint import Manifest, load_model, read_state_dict, save_checkpoint
from .registry import REGISTRY, build_model, get_entry, model_names

__all__ = ["REGISTRY", "Manifest", "build_model", "get_entry", "load_model", "model_names", "read_state_dict",
           "save_checkpoint"]
