"""Tiling a convolution onto an R×C weight-stationary array.

A conv with weights ``w[O, I, kh, kw]`` on an input ``x[I, H, W]`` (zero padding ``padding``, stride ``stride``)
is split into ``n_itiles = ceil(I/R)`` input-channel tiles and ``n_otiles = ceil(O/C)`` output-channel tiles
(channels past I or O are zero). Each (otile, itile, kij) with ``kij = ki·kw + kj`` is one *fold*: the
array holds ``W_fold[c, r] = w[otile·C + c, itile·R + r, ki, kj]`` and the stream is the
``N = Ho·Wo`` needed input positions ``nij = (oy·stride + ki)·Wp + (ox·stride + kj)`` of the padded map
(Wp = W + 2·padding), one R-vector per cycle. Output position ``p = oy·Wo + ox`` of output channel o is

    y[o, p] = ReLU( bias[o] + Σ_itile Σ_kij Σ_r W_fold[c, r] · x_pad[itile·R + r, nij(kij, p)] ).

Folds run in the order otile → itile → kij (fold index ``f = (otile·n_itiles + itile)·K + kij``), so one
otile's accumulation finishes before the next starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HardwareError
from .spec import ArraySpec, check_range


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    out_channels: int
    height: int
    width: int
    kh: int = 3
    kw: int = 3
    padding: int = 1
    stride: int = 1

    @property
    def padded_h(self) -> int:
        return self.height + 2 * self.padding

    @property
    def padded_w(self) -> int:
        return self.width + 2 * self.padding

    @property
    def out_h(self) -> int:
        return (self.padded_h - self.kh) // self.stride + 1

    @property
    def out_w(self) -> int:
        return (self.padded_w - self.kw) // self.stride + 1

    @property
    def n_positions(self) -> int:
        """N: output positions, i.e. stream length of one fold."""
        return self.out_h * self.out_w

    @property
    def n_padded(self) -> int:
        return self.padded_h * self.padded_w

    @property
    def n_kij(self) -> int:
        return self.kh * self.kw

    @property
    def macs(self) -> int:
        return self.in_channels * self.out_channels * self.n_kij * self.n_positions

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fold_input_indices(geom: ConvGeometry) -> np.ndarray:
    """``[K, N]`` array: padded flat index nij of the input that output position p needs at kernel offset kij."""
    oy, ox = np.divmod(np.arange(geom.n_positions), geom.out_w)
    ki, kj = np.divmod(np.arange(geom.n_kij), geom.kw)
    rows = oy[None, :] * geom.stride + ki[:, None]
    cols = ox[None, :] * geom.stride + kj[:, None]
    return rows * geom.padded_w + cols


@dataclass(frozen=True)
class MappedConv:
    """A conv cut into array tiles. ``x_tiles[it, r, nij]`` (padded input, unsigned),
    ``w_tiles[ot, it, kij, c, r]`` (signed; row c is output channel ot·C+c), ``bias[O]`` (int, may be zeros)."""

    geom: ConvGeometry
    spec: ArraySpec
    x_tiles: np.ndarray
    w_tiles: np.ndarray
    bias: np.ndarray

    @property
    def n_itiles(self) -> int:
        return self.x_tiles.shape[0]

    @property
    def n_otiles(self) -> int:
        return self.w_tiles.shape[0]

    @property
    def n_folds(self) -> int:
        return self.n_otiles * self.n_itiles * self.geom.n_kij

    @property
    def bias_tiles(self) -> np.ndarray:
        """``[n_otiles, C]``: the bias per output tile (zero past the last channel)."""
        b = np.zeros(self.n_otiles * self.spec.cols, dtype=np.int64)
        b[: self.geom.out_channels] = self.bias
        return b.reshape(self.n_otiles, self.spec.cols)


def geometry_issue(stride, padding, dilation) -> str | None:
    """Why the array cannot run a conv with this ``stride`` / ``padding`` / ``dilation`` (ints or per-axis pairs, as
    ``nn.Conv2d`` holds them), or None when it can. The mapping streams ``nij = (oy·stride + ki)·Wp + ox·stride + kj``
    of one padded map: one stride for both axes, the same zero padding on all four sides and adjacent taps
    (dilation 1); the kernel may be any kh × kw."""
    if isinstance(padding, str):
        return f"padding={padding!r} (an even 'same' kernel pads one side more)"
    stride, padding, dilation = ((v, v) if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation))
    for what, (a, b) in (("stride", stride), ("padding", padding)):
        if a != b:
            return f"{what} {(a, b)} differs between the axes"
    if dilation != (1, 1):
        return f"dilation {dilation} (the array's taps are adjacent)"
    return None


def map_conv(x_int: np.ndarray, w_int: np.ndarray, spec: ArraySpec, padding: int = 1, stride: int = 1,
             bias: np.ndarray | None = None) -> MappedConv:
    """Check ranges and tile ``x_int[I, H, W]`` (unsigned a_bits) and ``w_int[O, I, kh, kw]`` (signed w_bits)."""
    x = np.asarray(x_int)
    w = np.asarray(w_int)
    if x.ndim != 3 or w.ndim != 4 or w.shape[1] != x.shape[0]:
        raise HardwareError(f"need x[I,H,W] and w[O,I,kh,kw] with matching I, got {x.shape} and {w.shape}")
    if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(w.dtype, np.integer)):
        raise HardwareError(f"integer tensors required, got {x.dtype} and {w.dtype}")
    if padding < 0 or stride < 1:
        raise HardwareError(f"padding must be >= 0 and stride >= 1, got {padding}, {stride}")
    check_range(x, spec.a_bits, signed=False, what="input activations")
    check_range(w, spec.w_bits, signed=True, what="weights")
    geom = ConvGeometry(x.shape[0], w.shape[0], x.shape[1], x.shape[2], w.shape[2], w.shape[3], padding, stride)
    if geom.out_h < 1 or geom.out_w < 1:
        raise HardwareError(f"kernel {geom.kh}x{geom.kw} larger than the padded input {geom.padded_h}x{geom.padded_w}")
    R, C = spec.rows, spec.cols
    n_it, n_ot = -(-geom.in_channels // R), -(-geom.out_channels // C)
    xp = np.zeros((n_it * R, geom.padded_h, geom.padded_w), dtype=np.int64)
    xp[: geom.in_channels, padding: padding + geom.height, padding: padding + geom.width] = x
    x_tiles = xp.reshape(n_it, R, geom.n_padded)
    wp = np.zeros((n_ot * C, n_it * R, geom.n_kij), dtype=np.int64)
    wp[: geom.out_channels, : geom.in_channels] = w.reshape(geom.out_channels, geom.in_channels, geom.n_kij)
    w_tiles = wp.reshape(n_ot, C, n_it, R, geom.n_kij).transpose(0, 2, 4, 1, 3)
    b = np.zeros(geom.out_channels, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    if b.shape != (geom.out_channels,):
        raise HardwareError(f"bias must have shape ({geom.out_channels},), got {b.shape}")
    return MappedConv(geom, spec, x_tiles, np.ascontiguousarray(w_tiles), b)


def reference_conv(x_int: np.ndarray, w_int: np.ndarray, padding: int = 1, stride: int = 1,
                   bias: np.ndarray | None = None) -> np.ndarray:
    """Plain integer conv + bias (no ReLU, int64), independent of the tiling: ``[O, Ho, Wo]``."""
    x = np.pad(np.asarray(x_int, dtype=np.int64), ((0, 0), (padding, padding), (padding, padding)))
    w = np.asarray(w_int, dtype=np.int64)
    O, _, kh, kw = w.shape
    Ho = (x.shape[1] - kh) // stride + 1
    Wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((O, Ho, Wo), dtype=np.int64)
    for ki in range(kh):
        for kj in range(kw):
            patch = x[:, ki: ki + stride * (Ho - 1) + 1: stride, kj: kj + stride * (Wo - 1) + 1: stride]
            out += np.einsum("oi,ihw->ohw", w[:, :, ki, kj], patch)
    if bias is not None:
        out += np.asarray(bias, dtype=np.int64)[:, None, None]
    return out
