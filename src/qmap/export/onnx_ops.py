"""Translation of traced torch operations into ONNX nodes (one handler per module type / function).

A handler gets the :class:`GraphBuilder`, the module (or None for functions), the ONNX names of its tensor
inputs, the fx node (for constant arguments and shapes from ``ShapeProp``) and a base name; it returns the
ONNX name of its output. Anything without a handler is rejected with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nn import ops
from ..nn.fuse import affine_of
from ..nn.ops import channel_padding
from ..quant import QuantConv2d, Quantizer, QuantLinear
from ..quant.shift import OutlierShift
from .onnx_graph import GraphBuilder


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _input_shape(node) -> tuple[int, ...]:
    arg = node.args[0]
    meta = getattr(arg, "meta", {}).get("tensor_meta")
    if meta is None:
        raise ConfigError(f"{node.name}: no shape recorded for its input (ShapeProp did not reach it)")
    return tuple(meta.shape)


def _quantized_input(g: GraphBuilder, m: nn.Module, x: str, base: str) -> tuple[str, dict | None]:
    q = getattr(m, "input_quantizer", None)
    if q is None or not q.enabled:
        return x, None
    return g.quantize_activation(x, q, f"{base}.input")


def _weight(g: GraphBuilder, m: nn.Module, base: str) -> tuple[str, dict | None]:
    q = getattr(m, "weight_quantizer", None)
    if q is None or not q.enabled:
        return g.tensor(f"{base}.weight", m.weight.detach().float()), None
    return g.quantize_weight(m.weight.detach(), q, f"{base}.weight")


def _bias(g: GraphBuilder, m: nn.Module, base: str, spatial: bool = True) -> tuple[list[str], str | None]:
    """The layer's bias input(s): ``([name] or [], residual name or None)``.

    With a quantized input and weight the bias is stored as the integer model has it, in accumulator units:
    ``DequantizeLinear(b_int, s'_x·s'_w, axis=0)`` with ``b_int = round(b / (s'_x·s'_w))`` (int32). The
    fraction ``b − b_int·s'_x·s'_w`` the integer model carries into its requantizer is added after the
    Conv/Gemm as a float constant (``Add``, only when non-zero), so the graph still computes the fake-quant
    model's float bias. Written this way onnxruntime has nothing to rewrite: given a float bias, its default
    optimisations quantize it to int32 at s'_x·s'_w themselves and drop the fraction (docs/onnx.md)."""
    if m.bias is None:
        return [], None
    b = m.bias.detach().double().cpu()
    wq, iq = getattr(m, "weight_quantizer", None), getattr(m, "input_quantizer", None)
    if wq is None or iq is None or not (wq.enabled and iq.enabled):
        return [g.tensor(f"{base}.bias", b.float())], None
    acc_step = (iq.step.detach().double().reshape(()) * wq.step.detach().double().reshape(-1)).cpu()
    acc_step = acc_step.expand_as(b).float()
    b_int = torch.round(b / acc_step.double())
    if b_int.abs().max() >= 2 ** 31:
        raise ConfigError(f"{base}: bias does not fit int32 in accumulator units s'_x·s'_w")
    b_int = b_int.to(torch.int32)
    dq = g.node("DequantizeLinear", [g.tensor(f"{base}.bias.int", b_int), g.tensor(f"{base}.bias.step", acc_step)],
                f"{base}.bias.dq", axis=0)
    fraction = b.float() - b_int.float() * acc_step  # what the float32 DequantizeLinear leaves out
    if not fraction.any():
        return [dq], None
    shape = (1, -1, 1, 1) if spatial else (1, -1)
    return [dq], g.tensor(f"{base}.bias.fraction", fraction.reshape(shape))


def _integer_layer(g: GraphBuilder, m: nn.Module, x: str, base: str, op: str, **attrs) -> str | None:
    """The layer as qmap's inference computes it when it accumulates exactly (:mod:`qmap.quant.qmodules`):
    ``op`` (ConvInteger / MatMulInteger) on the activation codes and the signed weight codes — exact int32 —,
    then ``Cast`` to float, ``· m`` (m = s'_x·s'_w per output channel, the same float32 values) and ``+ b``: the
    same two roundings as the torch layer, so the output is bit-identical whatever order either library sums in.
    None when the layer does not accumulate exactly or its weight codes do not fit INT8 (then Q/DQ + float op)."""
    if not (isinstance(m, (QuantConv2d, QuantLinear)) and m.accumulates_exactly()):
        return None
    w = g.weight_codes(m.weight.detach(), m.weight_quantizer, f"{base}.weight", transpose=op == "MatMulInteger")
    if w is None:
        return None
    w, winfo = w
    q, _, zp, act = g.activation_codes(x, m.input_quantizer, f"{base}.input")
    _record(g, base, op, act, winfo)
    spatial = op == "ConvInteger"
    shape = (1, -1, 1, 1) if spatial else (1, -1)
    acc = g.node(op, [q, w, zp], base, **attrs)
    y = g.node("Cast", [acc], f"{base}.acc", to=g.tp.FLOAT)
    y = g.node("Mul", [y, g.tensor(f"{base}.acc_step", m.accumulator_step().float().reshape(shape))], f"{base}.scaled")
    if m.bias is not None:
        y = g.node("Add", [y, g.tensor(f"{base}.bias", m.bias.detach().float().reshape(shape))], f"{base}.biased")
    return _quantized_output(g, m, y, base)


def _record(g: GraphBuilder, base: str, op: str, act: dict | None, weight: dict | None) -> None:
    g.layers.append({"name": base, "op": op, "input": act, "weight": weight})


def _quantized_output(g: GraphBuilder, m: nn.Module, y: str, base: str) -> str:
    """Q/DQ of the layer output when the layer quantizes it (a curved activation follows)."""
    q = getattr(m, "output_quantizer", None)
    if q is None or not q.enabled:
        return y
    out, info = g.quantize_activation(y, q, f"{base}.output")
    _record(g, f"{base}.output", "QDQ", info, None)
    return out


def conv(g: GraphBuilder, m: nn.Conv2d, inputs: list[str], node, base: str) -> str:
    """Conv2d / QuantConv2d → ConvInteger on the codes (exact accumulation), else (Q/DQ input) + (DQ weight) +
    Conv with the bias in accumulator units."""
    if m.padding_mode != "zeros":
        raise ConfigError(f"{base}: padding_mode={m.padding_mode!r} is not exportable (only 'zeros')")
    k, d = _pair(m.kernel_size), _pair(m.dilation)
    if m.padding == "same":
        total = [di * (ki - 1) for ki, di in zip(k, d)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = [0, 0, 0, 0] if m.padding == "valid" else _pair(m.padding) * 2
    attrs = dict(kernel_shape=k, strides=_pair(m.stride), pads=pads, dilations=d, group=m.groups)
    exact = _integer_layer(g, m, inputs[0], base, "ConvInteger", **attrs)
    if exact is not None:
        return exact
    x, act = _quantized_input(g, m, inputs[0], base)
    w, winfo = _weight(g, m, base)
    bias, residual = _bias(g, m, base)
    _record(g, base, "Conv", act, winfo)
    y = g.node("Conv", [x, w, *bias], base, **attrs)
    y = g.node("Add", [y, residual], f"{base}.bias_fraction") if residual else y
    return _quantized_output(g, m, y, base)


def linear(g: GraphBuilder, m: nn.Linear, inputs: list[str], node, base: str) -> str:
    """Linear / QuantLinear on a [N, features] input → MatMulInteger on the codes (exact accumulation), else
    Gemm(x, W, b, transB=1)."""
    if len(_input_shape(node)) != 2:
        raise ConfigError(f"{base}: Linear on a {len(_input_shape(node))}-D input is not exportable (needs 2-D)")
    exact = _integer_layer(g, m, inputs[0], base, "MatMulInteger")
    if exact is not None:
        return exact
    x, act = _quantized_input(g, m, inputs[0], base)
    w, winfo = _weight(g, m, base)
    bias, residual = _bias(g, m, base, spatial=False)
    _record(g, base, "Gemm", act, winfo)
    y = g.node("Gemm", [x, w, *bias], base, transB=1)
    y = g.node("Add", [y, residual], f"{base}.bias_fraction") if residual else y
    return _quantized_output(g, m, y, base)


def quantizer(g: GraphBuilder, m: Quantizer, inputs: list[str], node, base: str) -> str:
    """A stand-alone activation Quantizer module."""
    if not m.enabled:
        return inputs[0]
    out, info = g.quantize_activation(inputs[0], m, base)
    _record(g, base, "QDQ", info, None)
    return out


def max_pool(g: GraphBuilder, m: nn.MaxPool2d, inputs: list[str], node, base: str) -> str:
    if m.return_indices:
        raise ConfigError(f"{base}: MaxPool2d(return_indices=True) is not exportable")
    stride = m.stride if m.stride is not None else m.kernel_size
    return g.node("MaxPool", inputs, base, kernel_shape=_pair(m.kernel_size), strides=_pair(stride),
                  pads=_pair(m.padding) * 2, dilations=_pair(m.dilation), ceil_mode=int(m.ceil_mode))


def avg_pool(g: GraphBuilder, m: nn.AvgPool2d, inputs: list[str], node, base: str) -> str:
    if m.divisor_override is not None:
        raise ConfigError(f"{base}: AvgPool2d(divisor_override=...) is not exportable")
    stride = m.stride if m.stride is not None else m.kernel_size
    return g.node("AveragePool", inputs, base, kernel_shape=_pair(m.kernel_size), strides=_pair(stride),
                  pads=_pair(m.padding) * 2, ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))


def adaptive_pool(g: GraphBuilder, m: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d, inputs: list[str], node,
                  base: str) -> str:
    """Output 1x1 → GlobalAveragePool / GlobalMaxPool; an output size dividing the input → AveragePool / MaxPool
    (k = stride = in/out)."""
    op = "Max" if isinstance(m, nn.AdaptiveMaxPool2d) else "Average"
    h, w = _input_shape(node)[-2:]
    oh, ow = [o if o is not None else i for o, i in zip(_pair(m.output_size), (h, w))]
    if (oh, ow) == (1, 1):
        return g.node(f"Global{op}Pool", inputs, base)
    if h % oh or w % ow:
        raise ConfigError(f"{base}: {type(m).__name__} to {oh}x{ow} from {h}x{w} (not a divisor) is not exportable")
    k = [h // oh, w // ow]
    return g.node(f"{op}Pool", inputs, base, kernel_shape=k, strides=k)


def relu(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    return g.node("Relu", inputs[:1], base)


def hardswish(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    if g.opset < 14:
        raise ConfigError(f"{base}: Hardswish needs opset >= 14 (got {g.opset})")
    return g.node("HardSwish", inputs, base)


def hardsigmoid(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """relu6(x + 3) / 6 = HardSigmoid(alpha=1/6, beta=1/2)."""
    return g.node("HardSigmoid", inputs, base, alpha=1.0 / 6.0, beta=0.5)


def sigmoid(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    return g.node("Sigmoid", inputs, base)


def leaky_relu(g: GraphBuilder, m: nn.LeakyReLU, inputs: list[str], node, base: str) -> str:
    return g.node("LeakyRelu", inputs, base, alpha=float(m.negative_slope))


def elu(g: GraphBuilder, m: nn.ELU, inputs: list[str], node, base: str) -> str:
    return g.node("Elu", inputs, base, alpha=float(m.alpha))


def tanh(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    return g.node("Tanh", inputs, base)


def softplus(g: GraphBuilder, m: nn.Softplus, inputs: list[str], node, base: str) -> str:
    """log(1 + e^(βx))/β: Softplus, with Mul/Div around it for β ≠ 1 (torch's linear branch above ``threshold``
    differs from it by < e^−threshold)."""
    if m.beta == 1:
        return g.node("Softplus", inputs, base)
    beta = g.tensor(f"{base}.beta", torch.tensor(float(m.beta)))
    y = g.node("Softplus", [g.node("Mul", [inputs[0], beta], f"{base}.scaled")], f"{base}.softplus")
    return g.node("Div", [y, beta], base)


def mish(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """x · tanh(softplus(x)): the Mish operator at opset ≥ 18, else written out."""
    if g.opset >= 18:
        return g.node("Mish", inputs, base)
    t = g.node("Tanh", [g.node("Softplus", inputs, f"{base}.softplus")], f"{base}.tanh")
    return g.node("Mul", [inputs[0], t], base)


def hardtanh(g: GraphBuilder, m: nn.Hardtanh, inputs: list[str], node, base: str) -> str:
    """clamp(x, min_val, max_val) (ReLU6: 0, 6) → Clip."""
    lo = g.tensor(f"{base}.min", torch.tensor(float(m.min_val)))
    return g.node("Clip", [inputs[0], lo, g.tensor(f"{base}.max", torch.tensor(float(m.max_val)))], base)


def prelu(g: GraphBuilder, m: nn.PReLU, inputs: list[str], node, base: str) -> str:
    """PRelu with the slope(s) shaped to broadcast over [N, C, …] (one slope, or one per channel)."""
    slope = m.weight.detach().float().cpu()
    if slope.numel() > 1:
        slope = slope.reshape(-1, *([1] * (len(_input_shape(node)) - 2)))
    return g.node("PRelu", [inputs[0], g.tensor(f"{base}.slope", slope)], base)


def silu(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """x · sigmoid(x)."""
    return g.node("Mul", [inputs[0], g.node("Sigmoid", inputs, f"{base}.sigmoid")], base)


def gelu(g: GraphBuilder, m: nn.GELU, inputs: list[str], node, base: str) -> str:
    """GELU: the Gelu operator at opset ≥ 20, else 0.5·x·(1 + erf(x/√2)) (exact form only)."""
    if g.opset >= 20:
        return g.node("Gelu", inputs, base, approximate=m.approximate)
    if m.approximate != "none":
        raise ConfigError(f"{base}: GELU(approximate={m.approximate!r}) needs opset >= 20 (got {g.opset})")
    x = inputs[0]
    erf = g.node("Erf", [g.node("Div", [x, g.tensor(f"{base}.sqrt2", torch.tensor(math.sqrt(2.0)))],
                                f"{base}.scaled")], f"{base}.erf")
    one_plus = g.node("Add", [erf, g.tensor(f"{base}.one", torch.tensor(1.0))], f"{base}.one_plus")
    half_x = g.node("Mul", [x, g.tensor(f"{base}.half", torch.tensor(0.5))], f"{base}.half_x")
    return g.node("Mul", [half_x, one_plus], base)


def flatten(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """torch.flatten(x, 1) / nn.Flatten() / x.flatten(1) → Flatten(axis=1) (other dims are not supported)."""
    if m is not None:
        start, end = m.start_dim, m.end_dim
    else:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    rank = len(_input_shape(node))
    if start != 1 or end not in (-1, rank - 1):
        raise ConfigError(f"{base}: flatten(start_dim={start}, end_dim={end}) is not exportable (only 1, -1)")
    return g.node("Flatten", inputs[:1], base, axis=1)


def add(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    if len(inputs) != 2 or node.kwargs.get("alpha", 1) != 1:
        raise ConfigError(f"{base}: only the addition of two tensors is exportable")
    return g.node("Add", inputs, base)


def mul(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """Elementwise product of two tensors (broadcast: a [N, C, 1, 1] gate times a [N, C, H, W] map)."""
    return g.node("Mul", inputs, base)


def cat(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    return g.node("Concat", inputs, base, axis=1)


def affine(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """A BatchNorm left standing (not fused: it does not follow a layer) as its eval-mode affine a·x + c —
    Mul + Add with per-channel constants (``BatchNormalization`` would compute the same in float) — and scalar
    arithmetic (``x / 6``, ``0.2 * y``) as the same with scalars."""
    a, c = affine_of(node, {node.target: m} if m is not None else {})
    shape = (1, -1, *([1] * (len(_input_shape(node)) - 2))) if a.dim() else ()
    y = g.node("Mul", [inputs[0], g.tensor(f"{base}.scale", a.float().reshape(shape))], f"{base}.scaled")
    return g.node("Add", [y, g.tensor(f"{base}.shift", c.float().reshape(shape))], base)


def to_channels(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """[N, C] → [N, C, 1, 1]: Reshape to [0, -1, 1, 1] (0 keeps the batch)."""
    return g.node("Reshape", [inputs[0], g.tensor(f"{base}.shape", torch.tensor([0, -1, 1, 1]))], base)


def channel_pad(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """F.pad(x, (0, 0, 0, 0, a, b)): ONNX Pad with pads [0, a, 0, 0, 0, b, 0, 0] (begins, then ends, NCHW)."""
    a, b = channel_padding(node)
    return g.node("Pad", [inputs[0], g.tensor(f"{base}.pads", torch.tensor([0, a, 0, 0, 0, b, 0, 0]))], base)


def channel_gather(g: GraphBuilder, m, inputs: list[str], node, base: str) -> str:
    """A static choice of channels (chunk / split / slice / channel shuffle) → Gather(axis=1) of their indices."""
    index = ops.gathered_channels(node, _input_shape(node)[1])
    return g.node("Gather", [inputs[0], g.tensor(f"{base}.index", index)], base, axis=1)


def softmax(g: GraphBuilder, m: nn.Softmax | nn.LogSoftmax, inputs: list[str], node, base: str) -> str:
    """The trailing softmax / log-softmax over the classes → Softmax / LogSoftmax(axis=1)."""
    return g.node("LogSoftmax" if isinstance(m, nn.LogSoftmax) else "Softmax", inputs, base, axis=1)


def outlier_shift(g: GraphBuilder, m: OutlierShift, inputs: list[str], node, base: str) -> str:
    """OMR's shift form cat(x, relu(x[:, index] − X)) → Gather(axis=1) + Sub + Relu + Concat(axis=1) [+ Gather of
    the grouped consumer's order], with X the float32 clip the module computes (its live quantizer clip, frozen at
    export)."""
    x = inputs[0]
    picked = g.node("Gather", [x, g.tensor(f"{base}.index", m.index.detach().cpu().to(torch.int64))],
                    f"{base}.picked", axis=1)
    clip = g.tensor(f"{base}.clip", m.clip().detach().float().cpu().reshape(()))
    copies = g.node("Relu", [g.node("Sub", [picked, clip], f"{base}.minus_clip")], f"{base}.copies")
    if m.order is None:
        return g.node("Concat", [x, copies], base, axis=1)
    both = g.node("Concat", [x, copies], f"{base}.concat", axis=1)
    return g.node("Gather", [both, g.tensor(f"{base}.order", m.order.detach().cpu().to(torch.int64))], base, axis=1)


# Exact types (subclasses are not assumed to behave like their base). Functional ops arrive as the module they
# equal (qmap.nn.ops.as_module); the model graph has already dropped identities and dropouts.
MODULE_HANDLERS = {
    nn.Conv2d: conv, QuantConv2d: conv, nn.Linear: linear, QuantLinear: linear, Quantizer: quantizer,
    nn.ReLU: relu, nn.ReLU6: hardtanh, nn.Hardswish: hardswish, nn.Hardsigmoid: hardsigmoid, nn.GELU: gelu,
    nn.SiLU: silu, nn.Sigmoid: sigmoid, nn.MaxPool2d: max_pool, nn.AvgPool2d: avg_pool,
    nn.AdaptiveAvgPool2d: adaptive_pool, nn.AdaptiveMaxPool2d: adaptive_pool, nn.Flatten: flatten,
    OutlierShift: outlier_shift,
    nn.BatchNorm2d: affine, nn.BatchNorm1d: affine, nn.LeakyReLU: leaky_relu, nn.ELU: elu, nn.Tanh: tanh,
    nn.Softplus: softplus, nn.Mish: mish, nn.Hardtanh: hardtanh, nn.Softmax: softmax, nn.LogSoftmax: softmax,
    nn.PReLU: prelu,
}
FUNCTION_HANDLERS = {operator.add: add, torch.add: add, operator.mul: mul, torch.mul: mul, torch.cat: cat,
                     F.pad: channel_pad, ops.to_channels: to_channels,
                     ops.scalar_op: affine, ops.channel_piece: channel_gather, ops.channel_shuffle: channel_gather}
