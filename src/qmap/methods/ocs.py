"""OCS — outlier channel splitting (Zhao et al., ICML 2019), then RTN.

A channel holding an outlier is split in two halves so the outlier's magnitude halves while the network
function is unchanged (FP, up to float rounding); the quantizer's range then shrinks on the next calibration.
For a producer l → consumer l+1 pair (see :mod:`qmap.methods.channels`):

- weight splitting (consumer weights): pick the input channel c of l+1 holding the largest |w|; halve its
  columns and append a copy (W_{:,c}/2 twice), and duplicate l's output channel c unchanged so the copy
  sees the same activation:  W_{:,c}·x_c = W_{:,c}/2·x_c + W_{:,c}/2·x_c.
- activation splitting (consumer input): pick the channel c with the largest calibration max|v_c|; halve
  l's row and bias of c and append a copy, and duplicate l+1's input columns of c unchanged:
  W·v_c = W·(v_c/2) + W·(v_c/2). Exact only through positively homogeneous modules (ReLU, leaky ReLU,
  max/avg pooling: f(y/2) = f(y)/2); pairs through GELU/h-swish are skipped with a note.

Each split is re-ranked (a halved channel can be split again), ``ceil(expand_ratio × channels)`` splits per
pair and target. Layers with no producer (the first conv, whose input is the image) are not split. OCS
squeezes the range by halving the outlier, so every value of the split channel loses half its resolution —
unlike OMR, which keeps the step and doubles the range (see docs/omr_ocs.md).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError
from ..nn import fuse_bn
from ..quant import QuantConfig
from . import rtn
from .base import MethodResult, Timer
from .channels import (
    ChannelPair,
    channel_max,
    duplicate_inputs,
    duplicate_outputs,
    find_pairs,
    flatten_positions,
    input_columns,
)
from .options import signature_options

TARGETS = ("weight", "activation", "both")
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d, nn.Dropout)


def _split_once(model: nn.Module, pair: ChannelPair, channel: int, halve: str) -> None:
    """Split ``channel`` of ``pair``: ``halve='weight'`` halves the consumer columns, ``'activation'`` the
    producer row (and bias)."""
    producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
    idx = torch.tensor([channel])
    cols = input_columns(idx, flatten_positions(producer, consumer))
    duplicate_outputs(producer, idx, scale=0.5 if halve == "activation" else 1.0)
    duplicate_inputs(consumer, cols, scale=0.5 if halve == "weight" else 1.0)


def _weight_channel_max(model: nn.Module, pair: ChannelPair) -> torch.Tensor:
    """max |w| of the consumer over each producer channel's input columns."""
    producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
    w = consumer.weight.detach().abs().transpose(0, 1)
    return w.reshape(producer.weight.shape[0], -1).amax(1)


@torch.no_grad()
def ocs_split(model: nn.Module, calib: torch.Tensor | None = None, expand_ratio: float = 0.02,
              target: str = "weight") -> tuple[nn.Module, dict]:
    """A BN-fused copy of ``model`` with outlier channels split; returns (model, report).

    report: {'pairs': [{producer, consumer, target, channels, splits: [channel indices, in split order]}],
    'extra_channels', 'skipped'}.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown OCS target {target!r}; choose one of {', '.join(TARGETS)}")
    if not 0 <= expand_ratio <= 1:
        raise ConfigError(f"OCS expand_ratio must be in [0, 1], got {expand_ratio}")
    if target != "weight" and calib is None:
        raise ConfigError("OCS activation splitting needs calibration images")
    model = fuse_bn(copy.deepcopy(model))
    pairs, skipped = find_pairs(model)
    rows = []
    if target in ("activation", "both"):
        ok = [p for p in pairs if all(type(model.get_submodule(n)) in HOMOGENEOUS for n in p.between)]
        skipped += [f"{p.key}: activation splitting skipped, not positively homogeneous in between"
                    for p in pairs if p not in ok]
        maxima = channel_max(model, ok, calib) if ok else {}
        for p in ok:
            rows.append(_split_pair(model, p, "activation", maxima[p.key].abs(), expand_ratio))
    if target in ("weight", "both"):
        for p in pairs:
            rows.append(_split_pair(model, p, "weight", _weight_channel_max(model, p), expand_ratio))
    return model, {"pairs": rows, "extra_channels": sum(len(r["splits"]) for r in rows), "skipped": skipped}


def _split_pair(model: nn.Module, pair: ChannelPair, kind: str, magnitude: torch.Tensor, ratio: float) -> dict:
    """Greedy OCS on one pair: split the channel of largest ``magnitude`` ceil(ratio × channels) times."""
    mag = magnitude.detach().clone().cpu()
    n = math.ceil(ratio * len(mag) - 1e-9)
    splits = []
    for _ in range(n):
        c = int(torch.argmax(mag))
        _split_once(model, pair, c, kind)
        mag[c] /= 2
        mag = torch.cat([mag, mag[c:c + 1]])
        splits.append(c)
    return {"producer": pair.producer, "consumer": pair.consumer, "target": kind, "channels": len(magnitude),
            "splits": splits}


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, expand_ratio: float = 0.02,
          target: str = "weight", batch_size: int = 128) -> MethodResult:
    """OCS splitting (FP) followed by RTN quantization and calibration."""
    with Timer() as t:
        split, report = ocs_split(model, calib, expand_ratio, target)
        result = rtn.apply(split, calib, qcfg, batch_size=batch_size)
    return MethodResult(result.model, {"method": "ocs", "expand_ratio": expand_ratio, "target": target,
                                       **report, "seconds": t.seconds})


Options = signature_options(apply)
