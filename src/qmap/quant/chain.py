"""A quantized model as a chain: ``[layer, op, op, layer, op, ..., layer, op]`` traced with torch.fx.

The integer model supports feed-forward chains (the registry VGGs and tiny CNNs): every node takes the output
of the node before it. Between quantized layers only value-order-preserving ops are allowed — ReLU, max/avg
pooling, flatten, identity/dropout — which the integer model runs on integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError
from .qmodules import QUANT_MODULES


@dataclass(frozen=True)
class Relu:
    """max(x, 0)."""


@dataclass(frozen=True)
class MaxPool:
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int]
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    ceil_mode: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool of an integer tensor (exact: torch pools integer dtypes natively)."""
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)


@dataclass(frozen=True)
class AvgPool:
    """Average pooling without padding (adaptive pools are resolved to a kernel from the traced shapes)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]

    @property
    def area(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def sum_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Window sums of integer ``x`` (through float64, exact below 2^53): the average is sums / area."""
        return F.avg_pool2d(x.double(), self.kernel, self.stride, divisor_override=1).to(x.dtype)


@dataclass(frozen=True)
class Flatten:
    start_dim: int = 1
    end_dim: int = -1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


@dataclass(frozen=True)
class ShiftCopy:
    """OMR's shift form on integer codes: the producer is requantized to the wide range [0, qmax + shift] and
    ``c ↦ cat(clip(c, 0, qmax), clip(c[:, index] − shift, 0, qmax))``, where ``shift`` = X_clip in code units
    (qmax − z of the consumer's input quantizer). Equal to quantizing ``cat(x, relu(x[:, index] − X_clip))``
    with step s, since rounding commutes with an integer shift."""

    index: tuple[int, ...]
    shift: int
    qmax: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        copies = (x[:, list(self.index)] - self.shift).clamp(0, self.qmax)
        return torch.cat([x.clamp(max=self.qmax), copies], dim=1)


Op = Relu | MaxPool | AvgPool | Flatten | ShiftCopy


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _QuantLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANT_MODULES) or hasattr(m, "integer_op") or super().is_leaf_module(m, qualname)


_SKIP_MODULES = (nn.Identity, nn.Dropout)
_RELU_FUNCS = (F.relu, torch.relu, torch.relu_)


def _module_op(m: nn.Module, where: str, in_shape: torch.Size | None) -> Op | None:
    if isinstance(m, _SKIP_MODULES):
        return None
    if hasattr(m, "integer_op"):  # a module that states its own integer form (OMR's OutlierShift)
        return m.integer_op()
    if isinstance(m, nn.ReLU):
        return Relu()
    if isinstance(m, nn.MaxPool2d):
        return MaxPool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if isinstance(m, nn.AvgPool2d) and _pair(m.padding) == (0, 0) and not m.ceil_mode:
        return AvgPool(_pair(m.kernel_size), _pair(m.stride or m.kernel_size))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        (h, w), (oh, ow) = in_shape[-2:], _pair(m.output_size)
        if h % oh or w % ow:
            raise ConfigError(f"integer model: adaptive average pool {where} maps {h}x{w} to {oh}x{ow} "
                              "with unequal windows")
        return AvgPool((h // oh, w // ow), (h // oh, w // ow))
    if isinstance(m, nn.Flatten):
        return Flatten(m.start_dim, m.end_dim)
    raise ConfigError(f"integer model: unsupported module {type(m).__name__} at {where}; supported between "
                      "layers: ReLU, MaxPool2d, AvgPool2d (no padding), AdaptiveAvgPool2d, Flatten, Identity, Dropout")


def _function_op(node: fx.Node) -> Op | None:
    target, args = node.target, node.args
    if target in _RELU_FUNCS or (node.op == "call_method" and target in ("relu", "relu_")):
        return Relu()
    if target is torch.flatten or (node.op == "call_method" and target == "flatten"):
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        return Flatten(start, end)
    raise ConfigError(f"integer model: unsupported operation {getattr(target, '__name__', target)!r} "
                      f"(node {node.name}); the integer model needs a feed-forward chain of Conv/Linear layers "
                      "with ReLU, pooling and flatten between them")


@torch.no_grad()
def trace_chain(qmodel: nn.Module, input_shape: tuple[int, ...]) -> list[str | Op]:
    """The model's forward as a list: quantized layer names (str) and the :data:`Op` s between them.

    ``input_shape`` (C, H, W) fixes the spatial sizes that adaptive pools need.
    """
    try:
        gm = fx.GraphModule(qmodel, _QuantLeafTracer().trace(qmodel))
    except Exception as e:  # fx raises many types for untraceable control flow
        raise ConfigError(f"integer model: cannot trace the model with torch.fx ({type(e).__name__}: {e})") from None
    device = next(qmodel.parameters()).device
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape, device=device))
    graph = gm.graph
    chain: list[str | Op] = []
    prev: fx.Node | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            prev = node
            continue
        if node.op == "output":
            break
        if node.all_input_nodes != [prev]:
            raise ConfigError(f"integer model: node {node.name} does not take exactly the previous node's output "
                              "(residual adds and branches are not supported by the integer model)")
        prev_shape = prev.meta["tensor_meta"].shape
        prev = node
        if node.op == "call_module":
            m = qmodel.get_submodule(node.target)
            if isinstance(m, QUANT_MODULES):
                chain.append(node.target)
                continue
            op = _module_op(m, node.target, prev_shape)
        else:
            op = _function_op(node)
        if op is not None:
            chain.append(op)
    return chain
