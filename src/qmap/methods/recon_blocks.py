"""Reconstruction units and blocks, derived from the model's structure.

A model is viewed as a chain of *units* whose composition is its forward pass up to the logits (a trailing
softmax / log-softmax is not reconstructed): the :meth:`~qmap.nn.ModelGraph.units` of its traced graph, cut
wherever a single tensor is live. A unit holding
several quantized layers (a residual block, a squeeze-excite gate, a concat) is never split.

A :class:`Block` is a contiguous run of units ``[start, end)`` with *loss points*: the unit indices after
which the quantized output is compared with the FP output. Three granularities:

- ``layer``    one block per unit with quantized layers (one layer, or one residual block): it and the
               parameter-free units after it (activation, pooling) up to the next one; loss at its end (AdaRound).
- ``block``    one block per stage: units up to and including one that downsamples (a pooling op or a strided
               conv: a VGG stage, a ResNet stage), the rest on its own; loss at the end of the stage (BRECQ,
               QDrop) or after every layer unit (DJOS block-wise).
- ``network``  the whole network as one block, loss after every layer unit (DJOS network-wise, DOMR's Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..nn import ModelGraph, downsamples
from ..quant import QUANT_MODULES

GRANULARITIES = ("layer", "block", "network")


def sequential_units(model: nn.Module) -> list[nn.Module]:
    """The units whose composition is ``model.forward`` up to the logits (see the module docstring)."""
    return ModelGraph(model).units()


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
            if any(downsamples(u) for u in units[sp[0]:sp[1]]) or sp is spans[-1]:
                groups.append(cur)
                cur = []
    blocks = []
    for k, g in enumerate(groups):
        ends = tuple(e - 1 for _, e in g) if loss_every_layer else (g[-1][1] - 1,)
        blocks.append(Block(k, g[0][0], g[-1][1], ends))
    return blocks
