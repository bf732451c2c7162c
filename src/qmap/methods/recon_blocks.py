"""Reconstruction units and blocks of a sequential-style network.

A model is viewed as a chain of *units* whose composition is its forward pass: the children of a
``nn.Sequential``, or for the registry models (``features`` then ``classifier`` on the flattened map) the
children of ``features``, a flatten and the classifier. A unit holding several quantized layers (e.g. a
residual block) is never split.

A :class:`Block` is a contiguous run of units ``[start, end)`` with *loss points*: the unit indices after
which the quantized output is compared with the FP output. Three granularities:

- ``layer``    one block per quantized layer: the layer and the parameter-free units after it (BN-identity,
               ReLU, pooling) up to the next quantized layer; loss at its end (AdaRound).
- ``block``    one block per stage: layers up to and including a pooling unit (a VGG stage), the classifier
               on its own; loss at the end of the stage (BRECQ, QDrop) or after every layer (DJOS block-wise).
- ``network``  the whole network as one block, loss after every layer (DJOS network-wise, DOMR's Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..quant import QUANT_MODULES

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
GRANULARITIES = ("layer", "block", "network")


def sequential_units(model: nn.Module) -> list[nn.Module]:
    """The units whose composition is ``model.forward`` (see the module docstring)."""
    if isinstance(model, nn.Sequential):
        return list(model)
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module):
        head = list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]
        return [*features, nn.Flatten(1), *head]
    raise ConfigError(f"{type(model).__name__} is not a sequential-style model (nn.Sequential, or features + "
                      "classifier): block reconstruction cannot split it")


def has_quant_layer(unit: nn.Module) -> bool:
    return any(isinstance(m, QUANT_MODULES) for m in unit.modules())


@dataclass(frozen=True)
class Block:
    """Units ``[start, end)`` of the chain; ``loss_points`` are unit indices (absolute) whose outputs are
    reconstructed, the last one always ``end − 1``."""

    index: int
    start: int
    end: int
    loss_points: tuple[int, ...]

    def run(self, units: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``units[start:end]`` at the loss points, in order."""
        outs = []
        for i in range(self.start, self.end):
            x = units[i](x)
            if i in self.loss_points:
                outs.append(x)
        return outs

    def layers(self, units: list[nn.Module]) -> list[nn.Module]:
        """The quantized layers inside the block, in order."""
        return [m for u in units[self.start:self.end] for m in u.modules() if isinstance(m, QUANT_MODULES)]


def _layer_spans(units: list[nn.Module]) -> list[tuple[int, int]]:
    """[start, end) per quantized-layer unit, absorbing the parameter-free units after it (those before the
    first layer join the first span)."""
    heads = [i for i, u in enumerate(units) if has_quant_layer(u)]
    if not heads:
        raise ConfigError("model has no quantized layer: run quantize_model first")
    starts = [0, *heads[1:]]
    return list(zip(starts, [*heads[1:], len(units)]))


def make_blocks(units: list[nn.Module], granularity: str, loss_every_layer: bool = False) -> list[Block]:
    """Blocks of ``granularity`` (``layer`` | ``block`` | ``network``) over ``units``.

    ``loss_every_layer`` puts a loss point at the end of every layer span inside a block (always on for
    ``network``)."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    spans = _layer_spans(units)
    if granularity == "layer":
        groups = [[sp] for sp in spans]
    elif granularity == "network":
        groups, loss_every_layer = [spans], True
    else:
        groups, cur = [], []
        for sp in spans:
            cur.append(sp)
            if any(isinstance(m, POOLS) for u in units[sp[0]:sp[1]] for m in u.modules()) or sp is spans[-1]:
                groups.append(cur)
                cur = []
    blocks = []
    for k, g in enumerate(groups):
        ends = tuple(e - 1 for _, e in g) if loss_every_layer else (g[-1][1] - 1,)
        blocks.append(Block(k, g[0][0], g[-1][1], ends))
    return blocks
