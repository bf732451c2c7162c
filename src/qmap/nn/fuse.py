"""Conv/Linear + BatchNorm fusion.

For a conv ``z = W*x + b`` followed by ``y = γ(z − μ)/√(σ²+ε) + β`` (eval mode) the fused layer is

    W_f = γ·W/√(σ²+ε)            (scaled per output channel)
    b_f = β + γ·(b − μ)/√(σ²+ε)  (= β − γμ/√(σ²+ε) when the conv has no bias)

``fuse_bn(model)`` returns a copy in which each fused conv/linear carries (W_f, b_f) and its BN is replaced
by ``nn.Identity`` *in place*, so module names (``features.27`` ...) are unchanged by fusion.
Pairs are found as consecutive children of any ``nn.Sequential`` (the layout of every registry model), then,
for models with other layouts (residual blocks calling ``self.bn1(self.conv1(x))``), in the torch.fx graph: a
BatchNorm whose only input is a conv/linear whose output feeds nothing else.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

from .graph import set_module

_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))


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


def _fuse_sequential(seq: nn.Sequential) -> int:
    names = list(seq._modules)
    fused = 0
    for a, b in zip(names, names[1:]):
        la, lb = seq._modules[a], seq._modules[b]
        if any(isinstance(la, L) and type(lb) is B for L, B in _PAIRS):
            seq._modules[a] = _fused_layer(la, lb)
            seq._modules[b] = nn.Identity()
            fused += 1
    return fused


def _fuse_traced(model: nn.Module) -> int:
    """Fuse the layer→BN pairs the fx graph shows (layer output used by the BN only); modules keep their names."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable forward: leave the pairs to the error below
        return 0
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    fused = 0
    for node in graph.nodes:
        if node.op != "call_module" or len(node.all_input_nodes) != 1:
            continue
        src = node.all_input_nodes[0]
        if src.op != "call_module" or len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        la, lb = model.get_submodule(src.target), model.get_submodule(node.target)
        if any(isinstance(la, L) and type(lb) is B for L, B in _PAIRS):
            set_module(model, src.target, _fused_layer(la, lb))
            set_module(model, node.target, nn.Identity())
            fused += 1
    return fused


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every Conv2d+BatchNorm2d / Linear+BatchNorm1d pair; returns an eval-mode BN-free model."""
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    for m in list(out.modules()):
        if isinstance(m, nn.Sequential):
            _fuse_sequential(m)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in out.modules()):
        _fuse_traced(out)
    left = [n for n, m in out.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise NotImplementedError(f"BatchNorm layers not preceded by a conv/linear in a Sequential: {left}")
    return out
