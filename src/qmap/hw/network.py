"""Whole-network view: every conv layer of an integer model through the golden model, tiled onto the array.

Input is a plain list of :class:`IntConvLayer` (the integer model's view of each conv: integer input codes,
integer weights, integer bias, pooling flag). Two ways to run it:

- independent layers (``requant=None``): each layer runs on its own ``x_int`` — enough for cycle figures
  and for checking every layer's outputs against ``expected_out``;
- chained (``requant`` given): layer i+1 runs on ``requant(i, y_i)`` where ``y_i = ReLU(bias + conv)`` is
  the SFU output of layer i (int64 ``[O, Ho, Wo]``), followed by a 2×2 max-pool when ``pool_after``
  (max-pool commutes with a monotone requantizer); ``head(x_last) -> logits`` turns the last activation into
  integer logits, compared with ``expected_logits``.

With ``rtl`` (a :class:`qmap.hw.rtl_network.RtlLayerRunner`) every layer also runs on the Verilog core; its
outputs are compared with the golden model's value for value, its cycles with the golden count, and in a
chained run the RTL's outputs (not the golden model's) feed the next layer, so the logits come from the RTL.
Every layer runs in the array's psum arithmetic (``spec.psum_bits``, ``spec.overflow``); an overflow under
``overflow="error"`` raises :class:`HardwareError` naming the layer, the bits it needs and the bits available.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..errors import HardwareError
from .cycles import ideal_cycles, ws_no_overlap_cycles
from .export import assemble_output
from .mapping import ConvGeometry, MappedConv, map_conv
from .spec import ArraySpec
from .systolic import simulate
from .systolic_os import simulate_os


@dataclass(frozen=True)
class IntConvLayer:
    """One conv of the integer model: ``x_int[I,H,W]`` unsigned a_bits codes, ``w_int[O,I,kh,kw]`` signed
    w_bits codes, ``bias_int[O]`` in accumulator units (added by the SFU before ReLU), ``expected_out``
    ``[O,Ho,Wo]`` = the integer model's ReLU(bias + conv) for this input, if known."""

    name: str
    x_int: np.ndarray
    w_int: np.ndarray
    bias_int: np.ndarray | None = None
    padding: int = 1
    stride: int = 1
    pool_after: bool = False
    expected_out: np.ndarray | None = None


@dataclass
class NetworkReport:
    layers: list[dict] = field(default_factory=list)
    logits: np.ndarray | None = None
    logits_match: bool | None = None
    wall_s: float = 0.0

    @property
    def total_cycles(self) -> int:
        return sum(layer["cycles"] for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer["macs"] for layer in self.layers)

    @property
    def mismatches(self) -> int:
        return sum(layer["mismatches"] or 0 for layer in self.layers)

    def summary(self, spec: ArraySpec) -> dict:
        total = self.total_cycles
        rtl = [layer for layer in self.layers if "rtl_cycles" in layer]
        rtl_summary = {"rtl_layers": len(rtl), "rtl_cycles": sum(r["rtl_cycles"] for r in rtl),
                       "rtl_mismatches": sum(r["rtl_mismatches"] for r in rtl),
                       "rtl_cycles_equal_golden": all(r["rtl_cycles"] == r["cycles"] for r in rtl),
                       "rtl_wall_s": sum(r["rtl_wall_s"] for r in rtl),
                       "rtl_cpu_s": sum(r["rtl_cpu_s"] for r in rtl)} if rtl else {}
        return {"layers": len(self.layers), "macs": self.total_macs, "cycles": total, **rtl_summary,
                "ideal_cycles": sum(layer["ideal_cycles"] for layer in self.layers),
                "no_overlap_cycles": sum(layer["no_overlap_cycles"] for layer in self.layers),
                "utilisation": self.total_macs / (spec.rows * spec.cols * total) if total else 0.0,
                "mismatches": self.mismatches, "wall_s": self.wall_s,
                "simulated_macs_per_s": self.total_macs / self.wall_s if self.wall_s else None,
                "logits": None if self.logits is None else self.logits.tolist(), "logits_match": self.logits_match}


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2×2 max-pool, stride 2, of ``[C, H, W]`` (odd edges dropped, like torch)."""
    c, h, w = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def layer_tiling(layer: IntConvLayer, spec: ArraySpec) -> tuple[ConvGeometry, int, int]:
    """``(geometry, itiles, otiles)`` of a layer on the array, from its tensors' shapes."""
    (i, h, w), (o, _, kh, kw) = np.shape(layer.x_int), np.shape(layer.w_int)
    return (ConvGeometry(i, o, h, w, kh, kw, layer.padding, layer.stride), -(-i // spec.rows), -(-o // spec.cols))


def run_network(layers: Sequence[IntConvLayer], spec: ArraySpec, *,
                requant: Callable[[int, np.ndarray], np.ndarray] | None = None,
                head: Callable[[np.ndarray], np.ndarray] | None = None,
                expected_logits: np.ndarray | None = None, engine: str = "wavefront",
                rtl: Callable[[MappedConv, str], tuple[np.ndarray, dict]] | None = None) -> NetworkReport:
    """Simulate every layer (``spec.dataflow`` picks the WS or OS golden model; ``rtl`` also runs it on the
    Verilog core); per layer: cycles, utilisation, psum bits needed, mismatches against ``expected_out``."""
    report = NetworkReport()
    t0 = time.perf_counter()
    x = None
    for i, layer in enumerate(layers):
        x_in = layer.x_int if (requant is None or x is None) else x
        mapped = map_conv(x_in, layer.w_int, spec, layer.padding, layer.stride, layer.bias_int)
        try:  # OS has no RTL; its vectorised engine plays the WS wavefront engine's role
            res = (simulate_os(mapped, "vectorised" if engine == "wavefront" else engine) if spec.dataflow == "os"
                   else simulate(mapped, engine))
        except HardwareError as e:
            raise HardwareError(f"layer {layer.name}: {e}") from None
        outputs = res.outputs
        g = mapped.geom
        row = {"name": layer.name, "in_channels": g.in_channels, "out_channels": g.out_channels,
               "hw": [g.height, g.width], "itiles": mapped.n_itiles, "otiles": mapped.n_otiles,
               "folds": mapped.n_folds, "macs": g.macs, "cycles": res.cycles.total,
               "utilisation": res.cycles.utilisation, "ideal_cycles": ideal_cycles(g, spec),
               "no_overlap_cycles": ws_no_overlap_cycles(g, spec), "psum_bits_needed": res.psum_bits_needed,
               "psum_bits": spec.psum_bits, "sim_s": res.wall_s}
        if rtl is not None:
            outputs, r = rtl(mapped, layer.name)
            row.update(rtl_cycles=r["cycles"], rtl_mismatches=int(np.count_nonzero(outputs != res.outputs)),
                       rtl_wall_s=r["run_wall_s"], rtl_cpu_s=r["run_cpu_s"])
        y = assemble_output(outputs, g)
        row["mismatches"] = None if layer.expected_out is None else int(np.count_nonzero(y != layer.expected_out))
        report.layers.append(row)
        if requant is not None:
            x = requant(i, y)
            if layer.pool_after:
                x = max_pool2(x)
    report.wall_s = time.perf_counter() - t0
    if head is not None:
        if x is None:
            raise HardwareError("head() needs the chained run: pass requant as well")
        report.logits = np.asarray(head(x))
        if expected_logits is not None:
            report.logits_match = bool(np.array_equal(report.logits, np.asarray(expected_logits)))
    return report


@dataclass(frozen=True)
class ConvShape:
    name: str
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int
    padding: int
    stride: int
    pool_after: bool


def conv_shapes(model: nn.Module, input_hw: tuple[int, int] = (32, 32)) -> list[ConvShape]:
    """Conv layers of a sequential CNN (``model.features``: Conv2d / MaxPool2d / others) with their input sizes."""
    h, w = input_hw
    shapes: list[ConvShape] = []
    for name, mod in model.features.named_children():
        if isinstance(mod, nn.Conv2d):
            k, p, s = mod.kernel_size[0], mod.padding[0], mod.stride[0]
            shapes.append(ConvShape(f"features.{name}", mod.in_channels, mod.out_channels, h, w, k, p, s, False))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif isinstance(mod, nn.MaxPool2d):
            if shapes:
                shapes[-1] = ConvShape(**{**shapes[-1].__dict__, "pool_after": True})
            h, w = h // 2, w // 2
    return shapes


def random_int_layers(shapes: Sequence[ConvShape], spec: ArraySpec, seed: int = 0) -> list[IntConvLayer]:
    """Random in-range integer tensors of the given shapes (cycle counts depend only on shapes)."""
    rng = np.random.default_rng(seed)
    (wl, wh), (al, ah) = spec.w_range, spec.a_range
    return [IntConvLayer(s.name, rng.integers(al, ah + 1, (s.in_channels, s.height, s.width)),
                         rng.integers(wl, wh + 1, (s.out_channels, s.in_channels, s.kernel, s.kernel)),
                         padding=s.padding, stride=s.stride, pool_after=s.pool_after) for s in shapes]
