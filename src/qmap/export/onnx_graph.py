"""``GraphBuilder``: collects ONNX nodes and initializers, and writes a :class:`~qmap.quant.Quantizer` as
QuantizeLinear / DequantizeLinear with the exact numerics of the fake-quant model.

Activation (per tensor), with quant step s, dequant step s' (= s unless decoupled), zero point z, range
[qmin, qmax] of the b-bit spec:

    q = QuantizeLinear(x, s, z)          = saturate_T(round_half_even(x / s) + z)
    q = Clip(q, qmin, qmax)              (integer domain; only when [qmin, qmax] is narrower than T's range)
    x̂ = DequantizeLinear(q, s', z)       = (q − z) · s'

which is term for term the fake-quant ``(clamp(round(x/s) + z, qmin, qmax) − z) · s'``. The storage type T
is INT8 (signed range) or UINT8 (unsigned); the Clip runs on T (ONNX Clip accepts 8-bit integers since
opset 12). INT4/UINT4 activations would drop the Clip at 4 bits, but onnxruntime 1.32's QDQ propagation then
moves the 4-bit tensor into a MaxPool, which has no 4-bit kernel, and the session fails to load — so
activations stay 8-bit.

Weight: the integers ``to_int(W)`` are stored as an INT4/UINT4 (opset ≥ 21, ``low_bit``, when they fit)
or INT8/UINT8 initializer, dequantized with ``DequantizeLinear(q, s', z, axis=0)`` (per output channel) —
exact, since the integers are computed once in torch with the model's own rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

LOW_BIT_OPSET = 21  # first opset with INT4/UINT4 in QuantizeLinear/DequantizeLinear


def onnx_modules():
    """``(onnx, helper, TensorProto, numpy_helper)``, or a ConfigError naming the optional extra."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ConfigError("ONNX export needs the optional 'onnx' extra: pip install 'qmap[onnx]'") from None
    return onnx, helper, TensorProto, numpy_helper


def int_types(opset: int, low_bit: bool) -> list[tuple[int, int, int]]:
    """Candidate integer storage types ``(TensorProto dtype, min, max)``, narrowest first."""
    _, _, tp, _ = onnx_modules()
    small = [(tp.INT4, -8, 7), (tp.UINT4, 0, 15)] if low_bit and opset >= LOW_BIT_OPSET else []
    return small + [(tp.INT8, -128, 127), (tp.UINT8, 0, 255)]


def storage_type(qmin: int, qmax: int, opset: int, low_bit: bool) -> tuple[int, int, int]:
    """The narrowest type ``(dtype, min, max)`` of the range's signedness holding [qmin, qmax] (4-bit types only
    with ``low_bit``): a signed range goes to INT4/INT8, an unsigned one to UINT4/UINT8."""
    for dtype, lo, hi in int_types(opset, low_bit):
        if (lo < 0) == (qmin < 0) and lo <= qmin and qmax <= hi:
            return dtype, lo, hi
    raise ConfigError(f"integer range [{qmin}, {qmax}] does not fit an 8-bit ONNX type")


class GraphBuilder:
    """Accumulates nodes/initializers with unique names; ``tensor``/``node`` return the produced name."""

    def __init__(self, opset: int, low_bit: bool = True):
        self.onnx, self.helper, self.tp, self.nh = onnx_modules()
        self.opset, self.low_bit = opset, low_bit
        self.nodes: list = []
        self.initializers: list = []
        self.names: set[str] = set()
        self.layers: list[dict] = []  # per-layer summary for the report

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def tensor(self, base: str, value: np.ndarray | torch.Tensor) -> str:
        """A float/int initializer from a numpy array or tensor (its dtype is kept)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        name = self.unique(base)
        self.initializers.append(self.nh.from_array(np.ascontiguousarray(value), name))
        return name

    def int_tensor(self, base: str, dtype: int, values: np.ndarray) -> str:
        """An integer initializer of ONNX type ``dtype``, stored as packed raw bytes (two INT4 per byte)."""
        import ml_dtypes  # an onnx dependency: numpy types for INT4/UINT4

        np_type = {self.tp.INT4: ml_dtypes.int4, self.tp.UINT4: ml_dtypes.uint4, self.tp.INT8: np.int8,
                   self.tp.UINT8: np.uint8}[dtype]
        return self.tensor(base, np.asarray(values, dtype=np.int64).astype(np_type))

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.unique(base)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # ----- quantizers -----
    def quantize_activation(self, x: str, quantizer, base: str) -> tuple[str, dict]:
        """QuantizeLinear → (Clip) → DequantizeLinear for a per-tensor activation quantizer."""
        q, scale, zp, info = self.activation_codes(x, quantizer, base)
        step = scale if quantizer.dequant_scale is None else self.tensor(
            f"{base}.dequant_scale", quantizer.step.detach().float().reshape(()))
        return self.node("DequantizeLinear", [q, step, zp], f"{base}.dq"), info

    def activation_codes(self, x: str, quantizer, base: str) -> tuple[str, str, str, dict]:
        """QuantizeLinear → (Clip) for a per-tensor activation quantizer: ``(codes q, scale, zero point, info)``."""
        spec = quantizer.spec
        if quantizer.scale.numel() != 1:
            raise ConfigError(f"{quantizer.name}: per-channel activation quantizers are not exportable")
        if spec.rounding != "half_even":
            raise ConfigError(f"{quantizer.name}: rounding {spec.rounding!r} is not exportable (ONNX QuantizeLinear "
                              "rounds half to even: quantize activations with rounding='half_even')")
        dtype, lo, hi = storage_type(spec.qmin, spec.qmax, self.opset, low_bit=False)
        scale = self.tensor(f"{base}.scale", quantizer.scale.detach().float().reshape(()))
        zp = self.int_tensor(f"{base}.zero_point", dtype, np.array(int(quantizer.zero_point.item())))
        q = self.node("QuantizeLinear", [x, scale, zp], f"{base}.q")
        clipped = (lo, hi) != (spec.qmin, spec.qmax)
        if clipped:
            q = self.node("Clip", [q, self.int_tensor(f"{base}.qmin", dtype, np.array(spec.qmin)),
                                   self.int_tensor(f"{base}.qmax", dtype, np.array(spec.qmax))], f"{base}.clip")
        info = {"bits": spec.bits, "signed": spec.signed, "type": self.type_name(dtype), "clip": clipped,
                "decoupled": quantizer.dequant_scale is not None}
        return q, scale, zp, info

    def quantize_weight(self, weight: torch.Tensor, quantizer, base: str) -> tuple[str, dict]:
        """Integer weight initializer + DequantizeLinear (per output channel on axis 0, or per tensor)."""
        spec = quantizer.spec
        q = quantizer.to_int(weight)
        dtype, _, _ = storage_type(spec.qmin, spec.qmax, self.opset, self.low_bit)
        per_channel = quantizer.scale.numel() > 1
        shape = (-1,) if per_channel else ()
        inputs = [self.int_tensor(f"{base}.int", dtype, q.cpu().numpy()),
                  self.tensor(f"{base}.step", quantizer.step.detach().float().reshape(shape))]
        zp = quantizer.zero_point.detach().round().to(torch.int64).reshape(shape).cpu().numpy()
        if zp.any():
            inputs.append(self.int_tensor(f"{base}.zero_point", dtype, zp))
        out = self.node("DequantizeLinear", inputs, f"{base}.dq", **({"axis": 0} if per_channel else {}))
        info = {"bits": spec.bits, "type": self.type_name(dtype), "per_channel": per_channel,
                "decoupled": quantizer.dequant_scale is not None}
        return out, info

    def weight_codes(self, weight: torch.Tensor, quantizer, base: str, transpose: bool = False
                     ) -> tuple[str, dict] | None:
        """The signed weight codes n_w = q − z as an INT8 tensor for ConvInteger / MatMulInteger (stored as INT4
        plus a ``Cast`` when they fit and ``low_bit``; ``transpose``: [in, out] for MatMulInteger). onnxruntime
        takes only a per-tensor weight zero point there, so z is folded into the codes; None when q − z does
        not fit INT8 (8-bit affine weights). The codes are the quantizer's own ``grid_codes`` — what the torch
        layer accumulates."""
        n = quantizer.grid_codes(weight).to(torch.int64)
        if n.min() < -128 or n.max() > 127:
            return None
        n = n.t() if transpose else n
        int4 = self.low_bit and self.opset >= LOW_BIT_OPSET and n.min() >= -8 and n.max() <= 7
        dtype = self.tp.INT4 if int4 else self.tp.INT8
        out = self.int_tensor(f"{base}.codes", dtype, n.cpu().numpy())
        if dtype != self.tp.INT8:
            out = self.node("Cast", [out], f"{base}.codes_int8", to=self.tp.INT8)
        info = {"bits": quantizer.spec.bits, "type": self.type_name(dtype),
                "per_channel": quantizer.scale.numel() > 1, "decoupled": quantizer.dequant_scale is not None}
        return out, info

    def type_name(self, dtype: int) -> str:
        return self.tp.DataType.Name(dtype)
