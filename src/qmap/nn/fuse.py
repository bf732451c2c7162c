"""Conv/Linear + BatchNorm fusion.

For a conv ``z = W*x + b`` followed by ``y = γ(z − μ)/√(σ²+ε) + β`` (eval mode) the fused layer is

    W_f = γ·W/√(σ²+ε)            (scaled per output channel)
    b_f = β + γ·(b − μ)/√(σ²+ε)  (= β − γμ/√(σ²+ε) when the conv has no bias)

``fuse_bn(model)`` returns a copy in which each fused conv/linear carries (W_f, b_f) and its BN is replaced
by ``nn.Identity`` *in place*, so module names (``features.27`` ...) are unchanged by fusion. The pairs come
from the :class:`~qmap.nn.ModelGraph`: a BatchNorm whose only input is a layer whose output only it uses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .graph import set_module
from .model_graph import ModelGraph


@torch.no_grad()
def fuse_weights(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(W_f, b_f)`` for a layer with ``weight``/``bias`` followed by ``bn`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm without running statistics")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    b = bias.double() if bias is not None else torch.zeros_like(scale)
    w_f = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b_f = beta + (b - bn.running_mean.double()) * scale
    return w_f.to(weight.dtype), b_f.to(weight.dtype)


def _fused_layer(layer: nn.Module, bn: nn.Module) -> nn.Module:
    w_f, b_f = fuse_weights(layer.weight, layer.bias, bn)
    new = copy.deepcopy(layer)
    if new.bias is None:
        new.bias = nn.Parameter(torch.zeros_like(b_f))
    new.weight.data.copy_(w_f)
    new.bias.data.copy_(b_f)
    return new


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every layer → BatchNorm pair of the model graph; returns an eval-mode BN-free model."""
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    for layer, bn in ModelGraph(out).bn_pairs():
        set_module(out, layer, _fused_layer(out.get_submodule(layer), out.get_submodule(bn)))
        set_module(out, bn, nn.Identity())
    return out
