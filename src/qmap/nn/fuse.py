"""Conv/Linear + BatchNorm fusion.

For a conv ``z = W*x + b`` followed by ``y = γ(z − μ)/√(σ²+ε) + β`` (eval mode) the fused layer is

    W_f = γ·W/√(σ²+ε)            (scaled per output channel)
    b_f = β + γ·(b − μ)/√(σ²+ε)  (= β − γμ/√(σ²+ε) when the conv has no bias)

``fuse_bn(model)`` returns a copy in which each fused conv/linear carries (W_f, b_f) and its BN is replaced
by ``nn.Identity`` *in place*, so module names (``features.27`` ...) are unchanged by fusion. The pairs come
from the :class:`~qmap.nn.ModelGraph`: a BatchNorm whose only input is a layer whose output only it uses. Any
other BatchNorm (a pre-activation net's BN → ReLU → conv, a BN after a residual add) stays: a per-channel
affine y = a·x + c (:func:`bn_affine`) that runs in float in the fake-quant model and as an exact integer affine
in the integer model. Scalar arithmetic on a tensor (``0.2 * y``, ``x / 6``) is the same affine with scalars
(:func:`affine_of`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .graph import set_module
from .model_graph import ModelGraph
from .ops import scalar_affine


@torch.no_grad()
def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` (float64, per channel) with ``bn(x) = a·x + c`` in eval mode: a = γ/√(σ²+ε), c = β − a·μ."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"a BatchNorm without running statistics has no eval-mode form: {bn}")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    a = bn.weight.double() * inv_std if bn.weight is not None else inv_std
    c = (bn.bias.double() if bn.bias is not None else torch.zeros_like(a)) - a * bn.running_mean.double()
    return a, c


def affine_of(node, modules: dict[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` (float64) with the node's output = a·x + c: per channel for a standalone BatchNorm (kind ``bn``),
    0-dim for scalar arithmetic (kind ``affine``, :func:`~qmap.nn.ops.scalar_op`)."""
    if node.op == "call_module":
        return bn_affine(modules[node.target])
    return tuple(torch.tensor(v, dtype=torch.float64) for v in scalar_affine(*node.args[1:]))


@torch.no_grad()
def fuse_weights(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(W_f, b_f)`` for a layer with ``weight``/``bias`` followed by ``bn`` in eval mode."""
    scale, shift = bn_affine(bn)
    b = bias.double() if bias is not None else torch.zeros_like(scale)
    w_f = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b_f = scale * b + shift
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
