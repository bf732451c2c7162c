"""Integer-only inference: a calibrated fake-quant model as plain integer tensors, steps and requantizers.

For quantized layer l with input integers x (real step s'_x, zero point 0), weight integers W = to_int(w) − z_w
(quant step s_w, real step s'_w and zero point z_w per output channel — DOMR's decoupled step is honoured; an
affine b-bit weight becomes the signed integer q − z ∈ [−(2^b − 1), 2^b − 1], b + 1 bits, so the array needs
no zero-point correction) and float bias b:

    psum   = conv(x, W)                                   exact integers (what the array accumulates)
    acc    = psum + b_int,  b_int = round(b / (s'_x·s'_w))  (bias in accumulator units)
    y      = clamp(round((acc + f) · M), lo, qmax),  M = s'_x·s'_w / s_next

where s_next is the quant step of the next layer's input quantizer, ``M`` a fixed-point multiplier
(:mod:`~qmap.quant.requant`), f = b/(s'_x·s'_w) − b_int the bias fraction (a per-channel rounding offset of
the requantizer, so the integer output sees the exact bias) and ``lo = 0`` when a ReLU follows (ReLU folded into
the clamp). Max-pooling and ReLU commute with the monotone requantization, so they run on the requantized
integers (the cheap side). The last layer returns its accumulators as int logits.

When the accumulator does not reach the requantizer unchanged — an average pool (window sums) before the next
layer, or a value that goes on to a branch, a merge or a table — the fraction cannot ride as an
offset (a ReLU before a pool keeps it only where the accumulator is positive). Such a layer continues on a
finer unit instead, 2^−k of an accumulator unit (k = ``ACC_FRACTION_BITS``):

    v      = acc·2^k + round(f·2^k)  = psum·2^k + round(b·2^k / (s'_x·s'_w))      step s'_x·s'_w / 2^k

so the bias is exact to 2^−(k+1) accumulator units whatever acts on v next (ReLU, window sums, requantizers
with M = s'_x·s'_w / (2^k · area · s_next)). The array still computes ``acc`` (psum + b_int, its SFU's ReLU);
for these layers the host reads the accumulator before the ReLU to form v.

The model is lowered from its :class:`~qmap.nn.ModelGraph`. A layer whose output reaches the next layer through
a chain of channel-wise ops (the VGG case) requantizes straight into that layer's input codes, as above. Any
other value (a branch, a merge, a curved activation's input) is an integer tensor t with a real step per
channel, t·step, and

- a layer fed such a value first requantizes it to its input quantizer (``in_requant``, multiplier step/s_x);
- residual ``+`` and ``cat`` requantize both branches to a common step (the finest step of either, so neither
  loses precision) with fixed-point multipliers, then add / concatenate integers;
- ``*`` (a gate) multiplies integers, the steps multiply;
- average pooling is a window sum, the step divides by the area; ReLU6 is a clamp at the code of 6;
- a curved activation (GELU, Hardswish, SiLU, Hardsigmoid, Sigmoid) acts on the b-bit codes of the layer's
  output quantizer through a 2^b-entry table holding the fake-quant model's own result for each code: the next
  layer's input code when a layer follows (through max-pool/flatten; through an OMR shift, the sum of the
  original's and the copy's codes, each as the fake-quant model rounds it), else a 24-bit code spanning the table's
  output range. One that follows no layer (after a residual add, an affine or a pool; the fake-quant model
  applies it to the float value) is a table over ±T, where the curve bends, on a step 2T / 2^18 (the value's
  integer shifted right to it), and its asymptote a·x + b (a = 0 or 1) beyond.

Requantizers into codes keep a 31-bit mantissa whatever the width of their input (a product past 63 bits is
formed in two halves, :mod:`~qmap.quant.requant`); gates, pools and merges shed extra fraction bits by rounding
shifts only where a bound passes 61 (40 for a merge's inputs).

Agreement with the fake-quant model: y equals ``to_int`` of the fake-quant model's next-layer input except
when ``(acc + f)·M`` lies within the fixed-point error of the multiplier (< 2^−mantissa relative), the float32
round-off of the fake-quant model or (on the finer unit) area·2^−(k+1)·M of a rounding boundary; then the two
differ by 1 LSB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, HardwareError
from ..nn import ModelGraph, require_module
from ..nn.fuse import affine_of
from ..nn.ops import LAYERS, TABLE_ACTIVATIONS, as_module, channel_padding, describe, gathered_channels
from .chain import AvgPool, Clamp, Flatten, MaxPool, Op, Relu, ShiftCopy, Table, ToChannels
from .intconv import abs_max, exact_bilinear
from .qmodules import QuantConv2d, quant_layers
from .quantizer import Quantizer
from .requant import Requantizer, round_shift
from .rounding import ROUND_FNS
from .shift import OutlierShift


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
    in_requant: Requantizer | None = None  # input not yet in this layer's codes: requantize it first
    feeds: str | None = None               # the layer whose input codes ``requant`` produces (None: other)
    bias_fraction: torch.Tensor | None = None  # int64 [O]: round(f·2^k) — the ops go on acc·2^k + this (k bits)

    @property
    def acc_step(self) -> torch.Tensor:
        """Real value of one accumulator unit per output channel, s'_x·s'_w (float64 [O])."""
        return self.x_step * self.w_step

    @property
    def value_step(self) -> torch.Tensor:
        """Real value of one unit of what the ops after the accumulator see: s'_x·s'_w, or / 2^k on the finer
        unit (``bias_fraction`` set)."""
        return self.acc_step / (1 if self.bias_fraction is None else 2**ACC_FRACTION_BITS)

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
    output: torch.Tensor | None = None  # the model's output: the logits, or its trailing softmax / log-softmax


@dataclass
class IntStep:
    """One step of the integer forward: ``op`` applied to the values named ``inputs``, giving value ``name``."""

    name: str
    op: IntLayer | Callable[..., torch.Tensor]
    inputs: list[str]


class IntegerModel:
    """The integer forward as :class:`IntStep` s (layers and the ops between them), with the input quantizer of
    the first layer (float image → integers) and the step of the final value (the logits' scale)."""

    def __init__(self, steps: list[IntStep], input_name: str, output_name: str, output_step: torch.Tensor,
                 input_scale: float, input_range: tuple[int, int], input_rounding: str,
                 head: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.steps = steps
        self.head = head  # the model's trailing softmax / log-softmax, applied in float to the logits
        self.input_name, self.output_name = input_name, output_name
        self.output_step = output_step
        self.input_scale = input_scale
        self.input_range = input_range
        self.input_rounding = input_rounding
        self.peaks: dict[str, dict[str, int]] = {}

    @property
    def layers(self) -> list[IntLayer]:
        """The integer layers in execution order."""
        return [st.op for st in self.steps if isinstance(st.op, IntLayer)]

    def layer(self, name: str) -> IntLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"integer model has no layer {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    def to(self, device: torch.device | str) -> IntegerModel:
        for lay in self.layers:
            lay.w_int, lay.bias_int = lay.w_int.to(device), lay.bias_int.to(device)
            if lay.bias_fraction is not None:
                lay.bias_fraction = lay.bias_fraction.to(device)
            for rq in (lay.requant, lay.in_requant):
                if rq is not None:
                    rq.to(device)
        return self

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float (normalised) images → the first layer's input integers, as the fake-quant model does."""
        q = ROUND_FNS[self.input_rounding](x.float() / self.input_scale)
        return q.clamp(*self.input_range).to(torch.int32)

    def run_layer(self, lay: IntLayer, x: torch.Tensor) -> LayerTrace:
        """Run one layer on its input integers ``x``; records and checks the accumulator peaks."""
        psum = lay.psum(x)
        acc = psum + lay.bias_int.reshape(1, -1, *([1] * (psum.dim() - 2)))
        peak = self.peaks.setdefault(lay.name, {"psum": 0, "acc": 0})
        peak["psum"] = max(peak["psum"], lay.check_width("partial sum", psum))
        peak["acc"] = max(peak["acc"], lay.check_width("accumulator (psum + bias)", acc))
        v = acc if lay.bias_fraction is None else (
            (acc << ACC_FRACTION_BITS) + lay.bias_fraction.reshape(1, -1, *([1] * (acc.dim() - 2))))
        for op in lay.pre_ops:
            v = op.sum_pool(v) if isinstance(op, AvgPool) else op(v)
        if lay.requant is not None:
            v = lay.requant(v, lower=0 if lay.relu_in_clamp else None)
        for op in lay.post_ops:
            v = op(v)
        return LayerTrace(lay.name, x, psum, acc, v)

    @torch.no_grad()
    def run(self, x: torch.Tensor, return_intermediates: bool = False) -> IntegerOutput:
        """Run on float images (quantized by the first input quantizer) or on integer inputs (any int dtype)."""
        env = {self.input_name: x.to(torch.int32) if not torch.is_floating_point(x) else self.quantize_input(x)}
        traces = []
        for st in self.steps:
            t = self._run_step(st, [env[i] for i in st.inputs])
            env[st.name] = t.y_int if isinstance(t, LayerTrace) else t
            if return_intermediates and isinstance(t, LayerTrace):
                traces.append(t)
        v = env[self.output_name]
        scale = self.output_step.to(v.device)
        shaped = scale.reshape(1, -1, *([1] * (v.dim() - 2))) if scale.numel() > 1 else scale.reshape(())
        logits = v.double() * shaped
        return IntegerOutput(logits, v.to(torch.int64), scale, traces if return_intermediates else None,
                             logits if self.head is None else self.head(logits))

    def _run_step(self, st: IntStep, args: list[torch.Tensor]) -> LayerTrace | torch.Tensor:
        if isinstance(st.op, IntLayer):
            return self.run_layer(st.op, args[0] if st.op.in_requant is None else st.op.in_requant(args[0]))
        return st.op(*args)

    @torch.no_grad()
    def run_after(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """The output integers of a one-path model given ``v``, the value of step ``name``: the steps after it
        (layers, pools, flatten, tables) applied in order — e.g. the host's part after the array's last layer."""
        names = [st.name for st in self.steps]
        for st in self.steps[names.index(name) + 1:]:
            if len(st.inputs) != 1:
                raise ValueError(f"run_after needs a one-path model; step {st.name} reads {st.inputs}")
            t = self._run_step(st, [v])
            v = t.y_int if isinstance(t, LayerTrace) else t
        return v

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
        """An ``nn.Module`` returning the model's float output (for :func:`qmap.evaluate.evaluate`)."""
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
        return self.imodel.run(x).output.float()


def _check_quantizer(q, what: str) -> None:
    if not q.enabled or not bool(q.initialized):
        raise ConfigError(f"integer model: {what} quantizer {q.name} is disabled or uncalibrated")
    if what == "input" and bool((q.zero_point != 0).any()):
        raise ConfigError(f"integer model: {what} quantizer {q.name} has a non-zero zero point "
                          "(only symmetric activation quantizers are supported)")


MERGE_FRACTION_BITS = 16  # extra fractional bits of a residual add / concat
ACC_FRACTION_BITS = 16    # k: fractional bits of the finer accumulator unit (bias exact to 2^-17 units)
TABLE_BITS = 24           # signed codes of a curved activation's table when no layer's codes follow
TABLE_EXTRA_BITS = 8      # of which beyond the 16 bits a table value needs (may be shed, like k)
TABLE_INDEX_BITS = 18     # a curved activation on a value (not a layer's codes): a table over ±T in 2^18 steps
TABLE_OUT_EXTRA_BITS = 8  # ... its output on a step 2^8 finer than the index step
MERGE_INPUT_BITS = 40     # a residual add / concat input wider than this sheds extra fraction bits first


def _split_ops(ops: list[Op], requant: bool) -> tuple[list[Op], list[Op], bool]:
    """(ops on accumulators, ops on integers, ReLU folded into the clamp)."""
    if not requant:
        return ops, [], False
    cut = max((i + 1 for i, op in enumerate(ops) if isinstance(op, AvgPool)), default=0)
    post = ops[cut:]
    return ops[:cut], [op for op in post if not isinstance(op, Relu)], any(isinstance(op, Relu) for op in post)


def _per_tensor_step(q: Quantizer) -> float:
    if q.scale.numel() != 1:
        raise ConfigError(f"integer model: activation quantizer {q.name} must be per-tensor")
    return float(q.step.detach().double())


def _mantissa(value_bits: int) -> int:
    """Mantissa width of a multiplier applied to values of ``value_bits`` bits (the product stays below 2^63)."""
    bits = min(31, 62 - value_bits)
    if bits < 8:
        raise ConfigError(f"integer model: values of {value_bits} bits leave no room for a fixed-point multiplier")
    return bits


def _requantizer(real, qmin: int, qmax: int, rounding: str, value_bits: int, pow2: bool,
                 frac: torch.Tensor | None = None) -> Requantizer:
    """A requantizer into codes with a 31-bit mantissa — the two-half product of :mod:`~qmap.quant.requant`
    covers wide values whenever the shift is ≥ 32 (small outputs) — else the mantissa that fits 64 bits."""
    rq = Requantizer.from_real(real, qmin, qmax, rounding, 31, pow2, frac)
    if value_bits + 31 > 62 and (int(rq.shift.min()) < 32 or value_bits > 61):
        rq = Requantizer.from_real(real, qmin, qmax, rounding, _mantissa(value_bits), pow2, frac)
    return rq


@dataclass
class _Value:
    """What the lowering knows of a value: t·step (per channel), the codes of which quantizer it holds (if any)
    and a bound on its bits."""

    step: torch.Tensor
    bits: int
    codes_of: Quantizer | None = None
    extra: int = 0  # fractional bits it carries beyond its inputs' precision (a layer's k, a merge's 16)


class _Lowering:
    """Builds the :class:`IntStep` s of a calibrated fake-quant model from its graph (see the module docstring)."""

    def __init__(self, qmodel: nn.Module, graph: ModelGraph, widths: dict[str, int], default_bits: int,
                 pow2_requant: bool):
        self.qmodel, self.graph = qmodel, graph
        self.widths, self.default_bits, self.pow2 = widths, default_bits, pow2_requant
        self.values: dict[str, _Value] = {}
        self.steps: list[IntStep] = []
        self.done: set[str] = set()

    def fail(self, node, why: str):
        raise ConfigError(f"integer model: {describe(node, self.graph.modules)}: {why}")

    # -------------------------------------------------------------------- layers and their chains
    def _chain(self, node) -> tuple[list, object | None]:
        """The channel-wise single-user nodes after layer ``node`` and the layer they reach (or None)."""
        ops, cur = [], node
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            kind = self.graph.kind.get(user)
            if kind in LAYERS:
                return ops, user
            if kind not in ("relu", "relu6", "maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "flatten",
                            "custom"):
                break
            ops.append(user)
            cur = user
        return ops, None

    def _op(self, node, step: torch.Tensor | None, codes: Quantizer | None) -> Op:
        """The integer op of channel-wise ``node`` acting on values of ``step`` (or on ``codes``' codes)."""
        kind, m = self.graph.kind[node], as_module(node, self.graph.modules)
        if kind == "relu":
            return Relu()
        if kind == "relu6":
            if codes is not None:
                return Clamp(codes.to_int(torch.tensor(6.0)).reshape(-1).to(torch.int64))
            return Clamp(torch.floor(6.0 / step).to(torch.int64))
        if kind == "maxpool":
            return MaxPool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        if kind == "avgpool":
            if _pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override:
                self.fail(node, "average pooling with padding, ceil_mode or a divisor has no exact integer form")
            return AvgPool(_pair(m.kernel_size), _pair(m.stride or m.kernel_size))
        if kind in ("adaptive_avgpool", "adaptive_maxpool"):
            (h, w), out = self.graph.shape(node.all_input_nodes[0])[-2:], _pair(m.output_size)
            oh, ow = (o if o is not None else i for o, i in zip(out, (h, w)))
            if h % oh or w % ow:
                self.fail(node, f"maps {h}x{w} to {oh}x{ow} with unequal windows")
            window = (h // oh, w // ow)
            return AvgPool(window, window) if kind == "adaptive_avgpool" else MaxPool(window, window, 0, 1, False)
        if kind == "flatten":
            return Flatten(m.start_dim, m.end_dim)
        if kind == "unflatten":
            return ToChannels()
        if kind == "custom":
            return m.integer_op()
        return self.fail(node, "has no integer form here")

    def _layer(self, node) -> None:
        name, m = node.target, self.graph.modules[node.target]
        for what, q in (("weight", m.weight_quantizer), *(("input", q) for q in m.activation_quantizers())):
            _check_quantizer(q, what)
        x_step = _per_tensor_step(m.input_quantizer)
        src = node.all_input_nodes[0]
        in_requant = None
        if src.op != "placeholder":
            v = self.values[src.name]
            if v.codes_of is not m.input_quantizer:
                in_requant = self._to_codes(v, m.input_quantizer)
        out_q = getattr(m, "output_quantizer", None)
        chain, nxt = ([], None) if out_q is not None else self._chain(node)
        target = out_q if out_q is not None else (
            self.graph.modules[nxt.target].input_quantizer if nxt is not None else None)
        wq, out_ch = m.weight_quantizer, m.weight.shape[0]
        w_step = wq.step.detach().double().reshape(-1).expand(out_ch).cpu().clone()
        acc_step = x_step * w_step
        bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(out_ch, dtype=torch.float64)
        bias_int = torch.round(bias / acc_step).to(torch.int64)
        frac = bias / acc_step - bias_int  # the bias fraction, accumulator units
        acc_bits = self.widths.get(name, self.default_bits)
        # the finer unit (module docstring) unless the accumulator goes straight to a requantizer or is the
        # model's output (int logits: the fraction, < 1/2 unit, is only an offset there)
        logits = not chain and all(u.op == "output" for u in node.users)
        fine = (target is None and not logits) or any(self.graph.kind[n] in ("avgpool", "adaptive_avgpool")
                                                       for n in chain)
        step, ops = acc_step / (2**ACC_FRACTION_BITS if fine else 1), []
        for n in chain:  # ops on accumulators see accumulator steps; after a requantization, codes
            ops.append(self._op(n, step, None))
            if isinstance(ops[-1], AvgPool):
                step = step / ops[-1].area
        pre, post, relu_in_clamp = _split_ops(ops, target is not None)
        if target is not None and any(isinstance(op, Clamp) for op in post):
            post = [Clamp(target.to_int(torch.tensor(6.0)).reshape(-1).to(torch.int64)) if isinstance(op, Clamp)
                    else op for op in post]
        x_spec = m.input_quantizer.spec
        w_int = wq.to_int(m.weight.detach()) - wq.zero_point.to(torch.int32).reshape(-1, *[1] * (m.weight.dim() - 1))
        lay = IntLayer(name=name, kind="conv" if isinstance(m, QuantConv2d) else "linear",
                       w_int=w_int.to(torch.int8).cpu(), bias_int=bias_int, x_step=x_step,
                       x_range=(x_spec.qmin, x_spec.qmax), w_step=w_step,
                       w_bits=wq.spec.bits + (0 if wq.spec.symmetric else 1), x_bits=x_spec.bits,
                       acc_bits=acc_bits, pre_ops=pre, post_ops=post, relu_in_clamp=relu_in_clamp,
                       in_requant=in_requant, feeds=nxt.target if nxt is not None else None,
                       bias_fraction=torch.round(frac * 2**ACC_FRACTION_BITS).to(torch.int64) if fine else None)
        if isinstance(m, QuantConv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ConfigError(f"integer model: layer {name} needs symmetric zero padding (it has "
                                  f"padding={m.padding!r}, padding_mode={m.padding_mode!r})")
            lay.stride, lay.padding, lay.dilation, lay.groups = m.stride, m.padding, m.dilation, m.groups
        lay.check_width("bias", bias_int)
        # bits of what the ops see: the worst case over all inputs, K·max|x|·max|w| + max|b|, plus the pooled
        # sums and the finer unit's fraction bits
        bound = lay.terms * max(map(abs, lay.x_range)) * int(lay.w_int.abs().max()) + int(bias_int.abs().max())
        value_bits = (min(acc_bits, bound.bit_length() + 1) + math.ceil(math.log2(lay.pool_area))
                      + (ACC_FRACTION_BITS if fine else 0))
        if target is not None:
            _per_tensor_step(target)
            spec = target.spec
            real = lay.value_step / lay.pool_area / float(target.scale.detach().double())
            wide = sum(op.shift for op in post if isinstance(op, ShiftCopy))  # OMR: codes up to qmax + X_clip
            lay.requant = _requantizer(real, spec.qmin, spec.qmax + wide, spec.rounding, value_bits, self.pow2,
                                       frac=None if fine else frac)
            out = _Value(target.step.detach().double().reshape(1).cpu(), spec.bits + 1, target)
        else:
            out = _Value(step, value_bits, extra=ACC_FRACTION_BITS if fine else 0)
        last = chain[-1] if chain else node
        for op in post + ([op for op in pre if isinstance(op, Flatten)] if target is None else []):
            if isinstance(op, Flatten):
                out = self._flattened(out, last)
        self.done.update(n.name for n in chain)
        self.values[last.name] = out
        self.steps.append(IntStep(last.name, lay, [src.name]))

    def _flattened(self, v: _Value, node) -> _Value:
        """Per-channel step → per-feature after flattening [N, C, H, W] to [N, C·H·W]."""
        if v.step.numel() == 1:
            return v
        shape = self.graph.shape(node)
        per = shape[1] // v.step.numel() if len(shape) == 2 else 1
        return _Value(v.step.repeat_interleave(per), v.bits, v.codes_of, v.extra)

    # -------------------------------------------------------------------- everything else
    def _rescale(self, v: _Value, common: float):
        """t ↦ round(t·step/common): an exact left shift by ``lift`` bits for the part of the ratio above 2^24
        (a fixed-point multiplier stays below 2^31), then the fixed-point multiply."""
        ratio = v.step / common
        lift = max(0, math.ceil(math.log2(float(ratio.max()))) - 24)
        rq = Requantizer.from_real(ratio / 2**lift, -(1 << 62), 1 << 62, "half_even", _mantissa(v.bits + lift))
        return lambda t: rq.rescale(t.to(torch.int64) << lift)

    def _merge(self, node) -> None:
        kind = self.graph.kind[node]
        srcs = node.all_input_nodes if kind != "cat" else list(node.args[0])
        vals = [self.values[n.name] for n in srcs]
        if kind == "mul":
            # the product must fit 61 bits (a requantizer after it forms its own product in two halves)
            over = vals[0].bits + vals[1].bits - 61
            a, ra = _shed(vals[0], over)
            b, rb = _shed(vals[1], over - ra)
            out = _Value(a.step * b.step, a.bits + b.bits, extra=a.extra + b.extra)
            if out.bits > 62:
                self.fail(node, f"the product of {a.bits}- and {b.bits}-bit integers overflows 64 bits")

            def op(x, y, ra=ra, rb=rb):
                return _round_shift(x, ra).to(torch.int64) * _round_shift(y, rb).to(torch.int64)
        else:
            # A common step 2^16 finer than the finest input: rescaling a coarser branch then rounds to 2^-16 of
            # an LSB, so the next requantization rounds (nearly always) the same sum as the fake-quant model's
            # float add — on the finest step itself ResNet-20's integer model agreed with fake-quant on 97.7 %
            # of the test images. A fine input (a merge's sum, a layer's finer unit) already carries extra bits
            # (no compounding along a chain of residual adds).
            # An input wider than MERGE_INPUT_BITS (a gate's product) first sheds extra fraction bits.
            vals, sheds = zip(*(_shed(v, v.bits - MERGE_INPUT_BITS) for v in vals))
            common = min(float(v.step.min()) / (1 if v.extra else 2**MERGE_FRACTION_BITS) for v in vals)
            scales = [self._rescale(v, common) for v in vals]
            bits = max(v.bits + math.ceil(math.log2(float(v.step.max()) / common)) for v in vals)
            out = _Value(torch.tensor([common], dtype=torch.float64), bits + 1, extra=MERGE_FRACTION_BITS)

            def op(*xs, scales=scales, sheds=sheds, cat=kind == "cat"):
                parts = [f(_round_shift(x, r)) for f, x, r in zip(scales, xs, sheds)]
                return torch.cat(parts, 1) if cat else parts[0] + parts[1]
        self.values[node.name] = out
        self.steps.append(IntStep(node.name, op, [n.name for n in srcs]))

    def _table(self, node) -> None:
        src = node.all_input_nodes[0]
        v = self.values[src.name]
        producer = self.graph.modules.get(src.target) if src.op == "call_module" else None
        q = getattr(producer, "output_quantizer", None)
        if q is None or v.codes_of is not q:
            self._value_table(node, v)
            return
        if q.spec.bits > 16:
            self.fail(node, f"a {q.spec.bits}-bit input needs a 2^{q.spec.bits}-entry table (at most 16 bits)")
        codes = torch.arange(q.spec.qmin, q.spec.qmax + 1, device=q.scale.device)
        x = q.dequantize(codes).reshape(1, -1).float()
        act = as_module(node, self.graph.modules)
        if isinstance(act, nn.PReLU) and act.num_parameters > 1:  # one table row per channel
            channels = self.graph.shape(node)[1]
            y = act(x.reshape(1, 1, -1).expand(1, channels, -1)).reshape(channels, -1)
        else:
            y = act(x).reshape(-1)
        y = y.detach()  # a PReLU's slope is a parameter
        chain, nxt = self._chain(node)
        shifts = [m for n in chain if isinstance(m := self.graph.modules.get(n.target), OutlierShift)]
        if nxt is not None and all(self.graph.kind[n] in ("maxpool", "adaptive_maxpool", "flatten") or
                                   isinstance(self.graph.modules.get(n.target), OutlierShift) for n in chain):
            tq = self.graph.modules[nxt.target].input_quantizer  # codes of the next layer, exactly
            table = tq.to_int(y).to(torch.int64)
            # An OMR shift on the way: the entry is k = original code + copy code, which ShiftCopy splits back.
            # Both codes are the fake-quant model's own (its float32 relu(y − X), then the quantizer), not
            # round(y/s) split: half-even rounding does not commute with an odd shift at a tie (1.5 → 2 but
            # 1.5 − 1 → 0), and with so few values a learned step can put one exactly on a tie.
            z = int(tq.zero_point.reshape(-1)[0])
            for m in shifts:
                table = table + tq.to_int(torch.relu(y - m.clip())).to(torch.int64) - z
            table = table.cpu()
            out = _Value(tq.step.detach().double().reshape(1).cpu(), tq.spec.bits + 1, tq)
        else:
            # TABLE_BITS-bit signed codes over its range: relative error 2^-TABLE_BITS, near the fake-quant model's
            # float32 (2^-24), so a gate (x · sigmoid) rarely rounds differently from it
            fine = float(y.abs().max().double().clamp_min(1e-30)) / 2**(TABLE_BITS - 1)
            table = torch.round(y.double() / fine).to(torch.int64).cpu()
            out = _Value(torch.tensor([fine], dtype=torch.float64), TABLE_BITS + 1, extra=TABLE_EXTRA_BITS)
        self.values[node.name] = out
        self.steps.append(IntStep(node.name, Table(table, q.spec.qmin), [src.name]))

    def _value_table(self, node, v: _Value) -> None:
        """A curved activation f on a value t·s that is no layer's codes (after a residual add, an affine or a
        pool; the fake-quant model applies f to the float value). f is affine beyond ±T (:func:`_asymptotes`,
        slopes 0 or 1), so with u = round(t / 2^r) on the index step e = s·2^r ≥ 2T / 2^TABLE_INDEX_BITS:

            out = table[u]                  |u·e| ≤ T,  table[u] = round(f(u·e) / e')
            out = a·2^8·u + round(b / e')   beyond, on either side (a ∈ {0, 1}),  e' = e / 2^8

        on the step e / 2^TABLE_OUT_EXTRA_BITS: the input keeps a precision e (≈ 2^-13 for T = 16), far below the
        next quantizer's step."""
        act = as_module(node, self.graph.modules)
        if v.step.numel() != 1 or (isinstance(act, nn.PReLU) and act.num_parameters > 1):
            self.fail(node, "a curved activation that follows no layer needs one step for its input (not after a "
                            "standalone BatchNorm) and one curve for every channel")
        tails = _asymptotes(act)
        if tails is None or any(a not in (0.0, 1.0) for _, (a, _b) in tails):
            self.fail(node, "a curved activation that follows no layer needs slope 0 or 1 far from 0 (LeakyReLU / "
                            "PReLU need the codes of a layer right before them)")
        reach = tails[1][0]
        s = float(v.step)
        r = max(0, math.ceil(math.log2(2 * reach / (2**TABLE_INDEX_BITS * s))))
        e = s * 2**r
        half = math.ceil(reach / e)
        y = act((torch.arange(-half, half + 1, dtype=torch.float64) * e).float()).detach().double()
        fine = e / 2**TABLE_OUT_EXTRA_BITS  # the output's step: its rounding well below the input's
        table = torch.round(y / fine).to(torch.int64)
        (_, (a_lo, b_lo)), (_, (a_hi, b_hi)) = tails
        a_lo, a_hi = int(a_lo) << TABLE_OUT_EXTRA_BITS, int(a_hi) << TABLE_OUT_EXTRA_BITS
        b_lo, b_hi = round(b_lo / fine), round(b_hi / fine)

        def op(t, r=r, half=half, table=table):
            u = _round_shift(t, r)
            inside = table.to(u.device)[u.clamp(-half, half) + half]
            return torch.where(u > half, a_hi * u + b_hi, torch.where(u < -half, a_lo * u + b_lo, inside))
        bits = max(v.bits - r + TABLE_OUT_EXTRA_BITS, *(int(abs(b)).bit_length() for b in (b_lo, b_hi)),
                   int(table.abs().max()).bit_length()) + 1
        if bits > 62:
            self.fail(node, f"its table's output needs {bits} bits")
        self.values[node.name] = _Value(torch.tensor([fine], dtype=torch.float64), bits,
                                        extra=max(0, v.extra - r) + TABLE_OUT_EXTRA_BITS)
        self.steps.append(IntStep(node.name, op, [node.all_input_nodes[0].name]))

    def _channelwise(self, node) -> None:
        src = node.all_input_nodes[0]
        v = self.values[src.name]
        op = self._op(node, v.step, v.codes_of)
        if isinstance(op, ShiftCopy) and v.codes_of is not (q := self.graph.modules[node.target].quantizer[0]):
            self._shift_from_value(node, v, op, q)
            return
        out = _Value(v.step, v.bits, v.codes_of, v.extra)
        if isinstance(op, AvgPool):  # window sums: log2(area) more bits, within 61
            v, r = _shed(v, v.bits + math.ceil(math.log2(op.area)) - 61)
            out = _Value(v.step / op.area, v.bits + math.ceil(math.log2(op.area)), extra=v.extra)

            def run(t, op=op, r=r):
                return op.sum_pool(_round_shift(t, r))
        else:
            run = op
        if isinstance(op, Flatten):
            out = self._flattened(out, node)
        self.values[node.name] = out
        self.steps.append(IntStep(node.name, run, [src.name]))

    def _affine(self, node) -> None:
        """A BatchNorm left standing (not after a layer) or scalar arithmetic: y = a·x + c (per channel, or one
        a, c) on the value t·s, exactly — t' = sign(a)·2^k·t + round(c·2^k / (|a|·s)), step |a|·s / 2^k (a channel
        with a = 0 is the constant c on step s / 2^k). A pure scale (c = 0) is exact with k = 0; an offset is
        rounded on a unit at least 2^-k_acc finer than the inputs' precision (k = k_acc minus the fraction bits
        the value already carries)."""
        src = node.all_input_nodes[0]
        v = self.values[src.name]
        a, c = (t.cpu().expand_as(v.step) if t.dim() == 0 else t.cpu() for t in affine_of(node, self.graph.modules))
        offset = bool((c != 0).any())
        k = max(0, ACC_FRACTION_BITS - v.extra) if offset else 0
        step = torch.where(a != 0, a.abs(), 1.0) * v.step.expand_as(a) / 2**k
        mult = (torch.sign(a) * 2**k).to(torch.int64)
        off = torch.round(c / step).to(torch.int64)
        bits = max(v.bits + k, int(off.abs().max()).bit_length()) + 1 if offset else v.bits
        if bits > 62:
            self.fail(node, f"its integer affine needs {bits} bits")

        def op(t, mult=mult, off=off):
            shape = (1, -1, *([1] * (t.dim() - 2)))
            return t.to(torch.int64) * mult.to(t.device).reshape(shape) + off.to(t.device).reshape(shape)
        self.values[node.name] = _Value(step, bits, extra=v.extra + k)
        self.steps.append(IntStep(node.name, op, [src.name]))

    def _channel_pad(self, node) -> None:
        """Zero channels before / after: the integers are padded with 0 — zero in any step; the new channels take
        the finest step already there (no wider range of steps for a merge to span)."""
        src = node.all_input_nodes[0]
        v, (a, b) = self.values[src.name], channel_padding(node)
        step = v.step if v.step.numel() == 1 else F.pad(v.step, (a, b), value=float(v.step.min()))
        self.values[node.name] = _Value(step, v.bits, v.codes_of, v.extra)
        self.steps.append(IntStep(node.name, lambda t: F.pad(t, (0, 0, 0, 0, a, b)), [src.name]))

    def _gather(self, node) -> None:
        """A static choice of channels (chunk / split / slice / ShuffleNet's shuffle): the same channels of the
        integers and of their per-channel steps."""
        src = node.all_input_nodes[0]
        v = self.values[src.name]
        index = gathered_channels(node, self.graph.shape(src)[1])
        step = v.step if v.step.numel() == 1 else v.step[index]
        self.values[node.name] = _Value(step, v.bits, v.codes_of, v.extra)
        self.steps.append(IntStep(node.name, lambda t: t.index_select(1, index.to(t.device)), [src.name]))

    def _to_codes(self, v: _Value, q: Quantizer, headroom: int = 0) -> Requantizer:
        """The requantizer of value ``v`` into the codes of the per-tensor quantizer ``q``, clamped to
        [qmin, qmax + headroom] (headroom: codes an OMR shift splits next)."""
        spec = q.spec
        return _requantizer(v.step / _per_tensor_step(q), spec.qmin, spec.qmax + headroom, spec.rounding, v.bits,
                            self.pow2)

    def _shift_from_value(self, node, v: _Value, op: ShiftCopy, q) -> None:
        """An OMR shift on a value that is not yet in its consumer's codes (e.g. h-swish table → average pool →
        shift): requantize to the consumer's step with the wide clamp [qmin, qmax + X_clip] first, then copy."""
        rq = self._to_codes(v, q, headroom=op.shift)
        self.values[node.name] = _Value(q.step.detach().double().reshape(1).cpu(), q.spec.bits + 1, q)
        self.steps.append(IntStep(node.name, lambda t: op(rq(t)), [node.all_input_nodes[0].name]))

    def build(self) -> IntegerModel:
        g = self.graph
        users = list(g.input.users)
        if len(users) != 1 or g.kind.get(users[0]) not in LAYERS:
            raise ConfigError("integer model: the image must feed exactly one layer (the first)")
        first = g.modules[users[0].target]
        for node in g.nodes:
            if node.name in self.done or node is g.head:
                continue
            kind = g.kind[node]
            if kind in LAYERS:
                self._layer(node)
            elif kind in ("add", "cat", "mul"):
                self._merge(node)
            elif kind in TABLE_ACTIVATIONS:
                self._table(node)
            elif kind == "channel_pad":
                self._channel_pad(node)
            elif kind == "channel_gather":
                self._gather(node)
            elif kind in ("bn", "affine"):
                self._affine(node)
            else:
                self._channelwise(node)
        iq = first.input_quantizer
        head = None if g.head is None else as_module(g.head, g.modules).double()
        return IntegerModel(self.steps, g.input.name, g.logits.name, self.values[g.logits.name].step,
                            float(iq.scale.detach().double()), (iq.spec.qmin, iq.spec.qmax), iq.spec.rounding, head)


def _asymptotes(act: nn.Module) -> tuple[tuple[float, tuple[float, float]], ...] | None:
    """((−T, (a, b)), (T, (a, b))): the smallest T = 2^k (k ≤ 7) beyond which ``act`` is a·x + b on each side to
    float32 precision (checked out to 4096·T), or None. SiLU, GELU, Hardswish, Mish: x and 0; Sigmoid, Tanh,
    Hardsigmoid: constants; ELU: x and −α; Softplus: x and 0."""
    for k in range(1, 8):
        reach, tails = 2.0**k, []
        for side in (-1.0, 1.0):
            x = side * reach * torch.tensor([1.0, 2.0, 4.0, 64.0, 4096.0])
            with torch.no_grad():
                y = act(x).double()
            a = float((y[1] - y[0]) / (x[1] - x[0]))
            a = round(a) if abs(a - round(a)) < 1e-6 else a
            b = float(y[0]) - a * float(x[0])
            if not bool(((y - (a * x.double() + b)).abs() <= 1e-6 * y.abs().clamp_min(1.0)).all()):
                break
            tails.append((side * reach, (float(a), b)))
        if len(tails) == 2:
            return tuple(tails)
    return None


def _shed(v: _Value, bits: int) -> tuple[_Value, int]:
    """``v`` with up to ``bits`` of its extra fractional bits dropped by a rounding right shift r: (value, r)."""
    r = min(v.extra, max(0, bits))
    return (v, 0) if r == 0 else (_Value(v.step * 2**r, v.bits - r, None, v.extra - r), r)


def _round_shift(t: torch.Tensor, r: int) -> torch.Tensor:
    """round(t / 2^r), halves up (:func:`~qmap.quant.requant.round_shift`), of integer ``t``; ``t`` when r = 0."""
    return round_shift(t.to(torch.int64), torch.tensor(r), "half_up") if r else t


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def to_integer_model(qmodel: nn.Module, acc_bits: int | dict[str, int] = 32, pow2_requant: bool = False,
                     input_shape: tuple[int, ...] | None = None) -> IntegerModel:
    """Convert a calibrated fake-quant model to an :class:`IntegerModel`, lowering its model graph.

    ``acc_bits`` declares the signed accumulator width (8..32), for all layers or per layer name; a run whose
    partial sums exceed it raises :class:`~qmap.errors.HardwareError`. ``pow2_requant`` replaces the
    fixed-point multipliers by pure shifts (exact only for power-of-two steps). ``input_shape`` (C, H, W)
    defaults to (first layer's in_channels, 32, 32).
    """
    qmodel = require_module(qmodel, "qmodel").eval()
    if input_shape is not None and not (isinstance(input_shape, (tuple, list)) and 1 <= len(input_shape) <= 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in input_shape)):
        raise ConfigError(f"input_shape must be (C, H, W) (or (features,)), each 1..4096, got {input_shape!r}")
    layers = quant_layers(qmodel)
    if not layers:
        raise ConfigError("integer model: the model has no quantized layer (run quantize_model first)")
    first = layers[0][1]
    if input_shape is None:
        input_shape = (first.in_channels, 32, 32) if isinstance(first, QuantConv2d) else (first.in_features,)
    widths = acc_bits if isinstance(acc_bits, dict) else {}
    default_bits = 32 if isinstance(acc_bits, dict) else acc_bits
    for n, b in [(None, default_bits), *widths.items()]:
        if not isinstance(b, int) or not 8 <= b <= 32:
            raise ConfigError(f"accumulator width {b!r}{f' for {n}' if n else ''} is not supported: use 8..32")
    param = next(qmodel.parameters())
    graph = ModelGraph(qmodel, torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    return _Lowering(qmodel, graph, widths, default_bits, pow2_requant).build()


__all__ = ["AvgPool", "Flatten", "IntLayer", "IntStep", "IntegerModel", "IntegerOutput", "LayerTrace", "MaxPool",
           "to_integer_model"]
