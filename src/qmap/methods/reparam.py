"""Function-preserving α re-parameterisation across two consecutive layers (the seed's §3.1; per channel it is
cross-layer equalisation, Nagel et al. 2019).

For layer l (output z = W_l x + b_l), layer l+1 and only positively homogeneous operations φ between them
(φ(α·z) = α·φ(z) for α > 0: ReLU, max/avg pooling, flatten — *not* BatchNorm, so fuse first):

    W_l ← α·W_l,  b_l ← α·b_l,  W_{l+1} ← W_{l+1}/α   (on the input columns)   ⇒   the network function is unchanged.

With one α_c per output channel c of layer l, row c of W_l and b_l is multiplied by α_c and the input-channel-c
columns of W_{l+1} are divided by α_c (every op above acts channel-wise, so homogeneity still holds).
:func:`equalization_alphas` gives CLE's choice α_c = √(r_{l+1,c} / r_{l,c}), r = max |w| over the channel's
weights, which equalises the two per-channel ranges (both become √(r_l r_{l+1})).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from ..nn import ModelGraph
from ..nn.ops import HOMOGENEOUS


def next_layer(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """(layer ``name``, the layer its output feeds) from the model graph's chain, checking that every op in
    between is positively homogeneous."""
    chain = ModelGraph(model).next_layer(name)
    bad = [k for k in chain.kinds if k not in HOMOGENEOUS]
    if bad:
        raise ConfigError(f"cannot move α from {name} to {chain.consumer} past {bad[0]}: not positively "
                          f"homogeneous (fuse BatchNorm first)")
    return model.get_submodule(name), model.get_submodule(chain.consumer)


def _as_alpha(alpha, channels: int, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=like.dtype, device=like.device).reshape(-1)
    if a.numel() not in (1, channels):
        raise ConfigError(f"α must be a scalar or have one value per output channel ({channels}), got {a.numel()}")
    if not torch.isfinite(a).all() or (a <= 0).any():
        raise ConfigError("α must be finite and > 0 (ReLU is homogeneous for positive factors only)")
    return a.expand(channels)


def _scale(module: nn.Module, attr: str, factor: torch.Tensor, dim: int) -> None:
    t = getattr(module, attr, None)
    if t is None:
        return
    shape = [1] * t.dim()
    shape[dim] = -1
    t.data.mul_(factor.reshape(shape))


def _grouped(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups != 1


def _input_factor(nxt: nn.Module, inv: torch.Tensor, name: str) -> torch.Tensor:
    """The factor of each input column of ``nxt`` (dim 1 of its weight) for per-channel factors ``inv``: a flatten
    in between makes channel c feed in_features/C consecutive columns."""
    cols, channels = nxt.weight.shape[1], len(inv)
    if _grouped(nxt):
        if not bool((inv == inv[0]).all()):
            raise ConfigError(f"per-channel α into the grouped conv after {name} is not supported")
        return inv[:1].expand(cols)
    if cols % channels:
        raise ConfigError(f"{name} has {channels} output channels but the next layer takes {cols} inputs")
    return inv.repeat_interleave(cols // channels)


@torch.no_grad()
def reparameterize(model: nn.Module, alphas: dict[str, float | torch.Tensor], inplace: bool = False) -> nn.Module:
    """Apply α (scalar or per output channel) to each named layer and 1/α to the next layer's input weights.

    Works on FP models and on fake-quant ones (``fp_weight`` follows ``weight``); quantizer steps are left as
    they are, so re-parameterise before quantizing unless the grids are meant to stay fixed.
    """
    out = model if inplace else copy.deepcopy(model)
    for name, alpha in alphas.items():
        layer, nxt = next_layer(out, name)
        channels = layer.weight.shape[0]
        a = _as_alpha(alpha, channels, layer.weight)
        inv = _input_factor(nxt, 1.0 / a, name)
        for attr in ("weight", "bias", "fp_weight"):
            _scale(layer, attr, a, 0)
        for attr in ("weight", "fp_weight"):
            _scale(nxt, attr, inv, 1)
    return out


@torch.no_grad()
def equalization_alphas(model: nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """CLE's per-channel α for each named layer (default: every Conv2d/Linear that has a next layer)."""
    if names is None:
        names = [c.producer for c in ModelGraph(model).chains()[0] if all(k in HOMOGENEOUS for k in c.kinds)]
    out = {}
    for name in names:
        layer, nxt = next_layer(model, name)
        if _grouped(nxt):
            raise ConfigError(f"cross-layer equalisation into the grouped conv after {name} is not supported")
        channels = layer.weight.shape[0]
        r_l = layer.weight.detach().reshape(channels, -1).abs().amax(1)
        cols = nxt.weight.detach().transpose(0, 1).reshape(channels, -1)  # input channel c's columns
        r_next = cols.abs().amax(1)
        alpha = torch.sqrt(r_next / r_l)
        out[name] = torch.where(torch.isfinite(alpha) & (alpha > 0), alpha, torch.ones_like(alpha))
    return out
