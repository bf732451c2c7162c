"""Graph helpers for sequential-style models: quantizable layers in execution order and their successors."""

from __future__ import annotations

from torch import nn

QUANT_LAYERS = (nn.Conv2d, nn.Linear)


def compute_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d/Linear modules (or their quantized wrappers' FP originals) in definition order.

    For the registry models (a ``features`` Sequential followed by ``classifier``) definition order is
    execution order.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"model has no module {name!r}") from None


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
