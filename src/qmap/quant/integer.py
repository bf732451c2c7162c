"""Integer-only inference: a calibrated fake-quant model as plain integer tensors, steps and requantizers.

For quantized layer l with input integers x (real step s'_x, zero point 0), weight integers W = to_int(w) − z_w
(quant step s_w, real step s'_w and zero point z_w per output channel — DOMR's decoupled step is honoured; an
affine b-bit weight becomes the signed integer q − z ∈ [−(2^b − 1), 2^b − 1], b + 1 bits, so the array needs
no zero-point correction) and float bias b:

    psum   = conv(x, W)                                   exact integers (what the array accumulates)
    acc    = psum + b_int,  b_int = round(b / (s'_x·s'_w))  (bias in accumulator units)
    y      = clamp(round((pool(relu(acc)) + f) · M), lo, qmax),  M = s'_x·s'_w / (area · s_next)

where s_next is the quant step of the next layer's input quantizer, ``area`` the window size of any average
pool before the next layer (pooling runs on accumulators, as window sums), ``M`` a fixed-point multiplier
(:mod:`~qmap.quant.requant`), f = b/(s'_x·s'_w) − b_int the bias fraction (a per-channel rounding offset of
the requantizer, so the integer output sees the exact bias; 0 when a ReLU or pool acts on the accumulators
before the requantization) and ``lo = 0`` when a ReLU follows (ReLU folded into the clamp). Max-pooling
and ReLU commute with the monotone requantization, so they run on the requantized integers (the cheap side).
The last layer returns its accumulators as int logits and their float scale s'_x·s'_w / area.

Agreement with the fake-quant model: y equals ``to_int`` of the fake-quant model's next-layer input except
when ``(acc + f)·M`` lies within the fixed-point error of M·2^shift (< 2^−30 relative), the float32 round-off
of the fake-quant model or (for layers with f = 0) the bias rounding 0.5·M of a rounding boundary; then the
two differ by 1 LSB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, HardwareError
from .chain import AvgPool, Flatten, MaxPool, Op, Relu, ShiftCopy, trace_chain
from .intconv import abs_max, exact_bilinear
from .qmodules import QuantConv2d, QuantLinear
from .requant import Requantizer


@dataclass
class IntLayer:
    """One integer layer: ``x (int) → psum → acc → [pre_ops on acc] → requant → [post_ops] → y (int)``."""

    name: str
    kind: str                          # "conv" | "linear"
    w_int: torch.Tensor                # int8 [O, I/groups, kh, kw] or [O, I]: q − z_w
    bias_int: torch.Tensor             # int64 [O], in accumulator units s'_x·s'_w
    x_step: float                      # real step of the input integers (s'_x)
    x_range: tuple[int, int]           # (qmin, qmax) of the input integers
    w_step: torch.Tensor               # float64 [O], real step of the weight integers (s'_w)
    w_bits: int                        # signed width of w_int: b (symmetric) or b + 1 (affine, q − z)
    x_bits: int
    acc_bits: int                      # declared accumulator width (signed)
    pre_ops: list[Op] = field(default_factory=list)   # on accumulators (ReLU, pools; average pools as sums)
    requant: Requantizer | None = None                # None for the last layer (int logits)
    post_ops: list[Op] = field(default_factory=list)  # on requantized integers (max-pool, flatten)
    relu_in_clamp: bool = False        # a ReLU after the requantization, folded into its clamp (floor 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def acc_step(self) -> torch.Tensor:
        """Real value of one accumulator unit per output channel, s'_x·s'_w (float64 [O])."""
        return self.x_step * self.w_step

    @property
    def pool_area(self) -> int:
        return math.prod(op.area for op in self.pre_ops if isinstance(op, AvgPool))

    @property
    def terms(self) -> int:
        """Products summed per output (in_channels/groups · kernel area)."""
        return self.w_int[0].numel()

    def psum(self, x: torch.Tensor) -> torch.Tensor:
        """conv/linear of the input integers with the weight integers, exact, int64."""
        if self.kind == "conv":
            def op(a, w):
                return F.conv2d(a, w, None, self.stride, self.padding, self.dilation, self.groups)
        else:
            op = F.linear
        return exact_bilinear(op, x, self.w_int, self.terms, max(abs(self.x_range[0]), abs(self.x_range[1])))

    def check_width(self, name: str, value: torch.Tensor) -> int:
        """max |value|; HardwareError if it does not fit ``acc_bits`` signed bits."""
        peak = abs_max(value)
        if peak > (1 << (self.acc_bits - 1)) - 1:
            raise HardwareError(f"layer {self.name}: {name} reaches |{peak}|, which needs {peak.bit_length() + 1} "
                                f"bits, but the accumulator is declared {self.acc_bits}-bit")
        return peak


@dataclass
class LayerTrace:
    """Per-layer integers of one run: input, partial sums, accumulators (psum + bias) and output."""

    name: str
    x_int: torch.Tensor
    psum: torch.Tensor
    acc: torch.Tensor
    y_int: torch.Tensor   # the next layer's input (or the final int logits, after the last layer's ops)


@dataclass
class IntegerOutput:
    logits: torch.Tensor            # float: int logits × their scale
    logits_int: torch.Tensor        # int64 accumulators of the last layer (after its ops)
    logits_scale: torch.Tensor      # float64 [classes]
    layers: list[LayerTrace] | None = None


class IntegerModel:
    """A chain of :class:`IntLayer` with the input quantizer of the first one (float image → integers)."""

    def __init__(self, layers: list[IntLayer], input_scale: float, input_range: tuple[int, int],
                 input_rounding: str):
        self.layers = layers
        self.input_scale = input_scale
        self.input_range = input_range
        self.input_rounding = input_rounding
        self.peaks: dict[str, dict[str, int]] = {}

    def layer(self, name: str) -> IntLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"integer model has no layer {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    def to(self, device: torch.device | str) -> IntegerModel:
        for lay in self.layers:
            lay.w_int, lay.bias_int = lay.w_int.to(device), lay.bias_int.to(device)
            if lay.requant is not None:
                lay.requant.to(device)
        return self

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float (normalised) images → the first layer's input integers, as the fake-quant model does."""
        from .rounding import ROUND_FNS
        q = ROUND_FNS[self.input_rounding](x.float() / self.input_scale)
        return q.clamp(*self.input_range).to(torch.int32)

    def run_layer(self, lay: IntLayer, x: torch.Tensor) -> LayerTrace:
        """Run one layer on input integers ``x``; records and checks the accumulator peaks."""
        psum = lay.psum(x)
        acc = psum + lay.bias_int.reshape(1, -1, *([1] * (psum.dim() - 2)))
        peak = self.peaks.setdefault(lay.name, {"psum": 0, "acc": 0})
        peak["psum"] = max(peak["psum"], lay.check_width("partial sum", psum))
        peak["acc"] = max(peak["acc"], lay.check_width("accumulator (psum + bias)", acc))
        v = acc
        for op in lay.pre_ops:
            v = op.sum_pool(v) if isinstance(op, AvgPool) else v.clamp_min(0) if isinstance(op, Relu) else op(v)
        if lay.requant is not None:
            v = lay.requant(v, lower=0 if lay.relu_in_clamp else None)
        for op in lay.post_ops:
            v = op(v)
        return LayerTrace(lay.name, x, psum, acc, v)

    @torch.no_grad()
    def run(self, x: torch.Tensor, return_intermediates: bool = False) -> IntegerOutput:
        """Run on float images (quantized by the first input quantizer) or on integer inputs (any int dtype)."""
        v = x.to(torch.int32) if not torch.is_floating_point(x) else self.quantize_input(x)
        traces = []
        for lay in self.layers:
            t = self.run_layer(lay, v)
            v = t.y_int
            if return_intermediates:
                traces.append(t)
        last = self.layers[-1]
        scale = last.acc_step / last.pool_area
        shaped = scale.to(v.device).reshape(1, -1, *([1] * (v.dim() - 2)))
        return IntegerOutput(v.double() * shaped, v.to(torch.int64), scale, traces if return_intermediates else None)

    def accumulator_report(self) -> list[dict]:
        """Per layer: the largest |psum| and |acc| seen by ``run`` so far, the signed bits they need, the declared
        width and the worst-case bound K·max|x|·max|w| + max|b_int| over all possible inputs."""
        rows = []
        for lay in self.layers:
            peak = self.peaks.get(lay.name, {"psum": 0, "acc": 0})
            x_max = max(abs(lay.x_range[0]), abs(lay.x_range[1]))
            bound = lay.terms * x_max * int(lay.w_int.abs().max()) + int(lay.bias_int.abs().max())
            rows.append({"layer": lay.name, "terms": lay.terms, "x_bits": lay.x_bits, "w_bits": lay.w_bits,
                         "max_abs_psum": peak["psum"], "max_abs_acc": peak["acc"],
                         "bits_needed": max(peak["psum"], peak["acc"]).bit_length() + 1,
                         "bound_bits": bound.bit_length() + 1, "declared_bits": lay.acc_bits})
        return rows

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` returning the float logits (for :func:`qmap.evaluate.evaluate`)."""
        return _IntegerModule(self)


class _IntegerModule(nn.Module):
    def __init__(self, imodel: IntegerModel):
        super().__init__()
        self.imodel = imodel
        self.register_buffer("_device_anchor", torch.zeros(0))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.imodel.to(self._device_anchor.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.imodel.run(x).logits.float()


def _check_quantizer(q, what: str) -> None:
    if not q.enabled or not bool(q.initialized):
        raise ConfigError(f"integer model: {what} quantizer {q.name} is disabled or uncalibrated")
    if what == "input" and bool((q.zero_point != 0).any()):
        raise ConfigError(f"integer model: {what} quantizer {q.name} has a non-zero zero point "
                          "(only symmetric activation quantizers are supported)")


def _split_ops(ops: list[Op], last: bool) -> tuple[list[Op], list[Op], bool]:
    """(ops on accumulators, ops on integers, ReLU folded into the clamp)."""
    if last:
        return ops, [], False
    cut = max((i + 1 for i, op in enumerate(ops) if isinstance(op, AvgPool)), default=0)
    post = ops[cut:]
    return ops[:cut], [op for op in post if not isinstance(op, Relu)], any(isinstance(op, Relu) for op in post)


def _int_layer(name: str, m: QuantConv2d | QuantLinear, ops: list[Op], nxt: QuantConv2d | QuantLinear | None,
               acc_bits: int, pow2_requant: bool) -> IntLayer:
    _check_quantizer(m.weight_quantizer, "weight")
    _check_quantizer(m.input_quantizer, "input")
    if m.input_quantizer.scale.numel() != 1:
        raise ConfigError(f"integer model: input quantizer of {name} must be per-tensor")
    wq = m.weight_quantizer
    out_ch = m.weight.shape[0]
    w_step = wq.step.detach().double().reshape(-1).expand(out_ch).cpu().clone()
    x_step = float(m.input_quantizer.step.detach().double())
    acc_step = x_step * w_step
    bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(out_ch, dtype=torch.float64)
    bias_int = torch.round(bias / acc_step).to(torch.int64)
    pre, post, relu_in_clamp = _split_ops(ops, last=nxt is None)
    x_spec = m.input_quantizer.spec
    w_int = wq.to_int(m.weight.detach()) - wq.zero_point.to(torch.int32).reshape(-1, *[1] * (m.weight.dim() - 1))
    lay = IntLayer(name=name, kind="conv" if isinstance(m, QuantConv2d) else "linear",
                   w_int=w_int.to(torch.int8).cpu(), bias_int=bias_int, x_step=x_step,
                   x_range=(x_spec.qmin, x_spec.qmax), w_step=w_step,
                   w_bits=wq.spec.bits + (0 if wq.spec.symmetric else 1), x_bits=x_spec.bits,
                   acc_bits=acc_bits, pre_ops=pre, post_ops=post, relu_in_clamp=relu_in_clamp)
    if isinstance(m, QuantConv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ConfigError(f"integer model: layer {name} needs numeric zero padding")
        lay.stride, lay.padding, lay.dilation, lay.groups = m.stride, m.padding, m.dilation, m.groups
    lay.check_width("bias", bias_int)
    if nxt is not None:
        _check_quantizer(nxt.input_quantizer, "input")
        nspec = nxt.input_quantizer.spec
        real = acc_step / lay.pool_area / float(nxt.input_quantizer.scale.detach().double())
        value_bits = acc_bits + math.ceil(math.log2(lay.pool_area))
        # The bias fraction lost by b_int passes the requantizer as an offset when the accumulator reaches it
        # unchanged (no ReLU/pool before the requantization, the VGG case).
        frac = bias / acc_step - bias_int if not pre else None
        wide = sum(op.shift for op in post if isinstance(op, ShiftCopy))  # OMR: codes up to qmax + X_clip
        lay.requant = Requantizer.from_real(real, nspec.qmin, nspec.qmax + wide, nspec.rounding,
                                            mantissa_bits=min(31, 63 - value_bits), pow2=pow2_requant, frac=frac)
    return lay


def to_integer_model(qmodel: nn.Module, acc_bits: int | dict[str, int] = 32, pow2_requant: bool = False,
                     input_shape: tuple[int, ...] | None = None) -> IntegerModel:
    """Convert a calibrated fake-quant model (a feed-forward chain) to an :class:`IntegerModel`.

    ``acc_bits`` declares the signed accumulator width (8..32), for all layers or per layer name; a run whose
    partial sums exceed it raises :class:`~qmap.errors.HardwareError`. ``pow2_requant`` replaces the
    fixed-point multipliers by pure shifts (exact only for power-of-two steps). ``input_shape`` (C, H, W)
    defaults to (first layer's in_channels, 32, 32).
    """
    qmodel = qmodel.eval()
    modules = dict(qmodel.named_modules())
    first = next((m for m in modules.values() if isinstance(m, (QuantConv2d, QuantLinear))), None)
    if first is None:
        raise ConfigError("integer model: the model has no quantized layer (run quantize_model first)")
    if input_shape is None:
        input_shape = (first.in_channels, 32, 32) if isinstance(first, QuantConv2d) else (first.in_features,)
    chain = trace_chain(qmodel, input_shape)
    if not chain or not isinstance(chain[0], str):
        raise ConfigError("integer model: the first operation must be a quantized Conv2d/Linear")
    names = [c for c in chain if isinstance(c, str)]
    ops_after: dict[str, list[Op]] = {n: [] for n in names}
    current = names[0]
    for c in chain[1:]:
        if isinstance(c, str):
            current = c
        else:
            ops_after[current].append(c)
    widths = acc_bits if isinstance(acc_bits, dict) else {}
    default_bits = 32 if isinstance(acc_bits, dict) else acc_bits
    for n, b in [(None, default_bits), *widths.items()]:
        if not isinstance(b, int) or not 8 <= b <= 32:
            raise ConfigError(f"accumulator width {b!r}{f' for {n}' if n else ''} is not supported: use 8..32")
    layers = [_int_layer(n, modules[n], ops_after[n], modules[names[i + 1]] if i + 1 < len(names) else None,
                         widths.get(n, default_bits), pow2_requant) for i, n in enumerate(names)]
    iq = first.input_quantizer
    return IntegerModel(layers, float(iq.scale.detach().double()), (iq.spec.qmin, iq.spec.qmax), iq.spec.rounding)


__all__ = ["AvgPool", "Flatten", "IntLayer", "IntegerModel", "IntegerOutput", "LayerTrace", "MaxPool",
           "to_integer_model"]
