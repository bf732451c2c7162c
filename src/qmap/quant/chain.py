"""The integer forms of the operations between quantized layers (:mod:`qmap.quant.integer` places them).

Each acts on an integer tensor whose real value is ``t · step`` (step per channel, axis 1). ReLU, ReLU6's
clamp, max-pooling and flatten commute with a monotone requantization, so they run on whichever side is
cheaper; an average pool is a window *sum* (its 1/area moves into the next requantization); a curved
activation is a lookup table over its 2^b input codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.ops import to_channels
from .intconv import abs_max


@dataclass(frozen=True)
class Relu:
    """max(x, 0)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)


@dataclass(frozen=True)
class Clamp:
    """ReLU6 on integers: clamp(x, 0, hi) with ``hi`` the code of 6 (per channel on accumulators)."""

    hi: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hi = self.hi.to(x.device, x.dtype)
        return torch.minimum(x.clamp_min(0), hi.reshape(1, -1, *([1] * (x.dim() - 2))) if hi.numel() > 1 else hi)


@dataclass(frozen=True)
class Table:
    """A curved activation on integer codes: ``out = table[x − lo]``, one entry per input code lo..hi (exact: the
    table holds what the fake-quant model computes for each code); a [C, n] table holds one row per channel
    (a per-channel PReLU): ``out[:, c] = table[c, x[:, c] − lo]``."""

    table: torch.Tensor
    lo: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        index = (x - self.lo).long()
        if self.table.dim() == 2:
            rows, n = self.table.shape
            index = index + (torch.arange(rows, device=x.device) * n).reshape(1, -1, *([1] * (x.dim() - 2)))
        return self.table.to(x.device).reshape(-1)[index]


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
        """Window sums of integer ``x``: the average is sums / area. Through float64, exact while the sums stay
        below 2^53; wider values are summed as two halves x = hi·2^26 + lo (each half's sums exact)."""
        def sums(t):
            return F.avg_pool2d(t.double(), self.kernel, self.stride, divisor_override=1).to(torch.int64)

        if abs_max(x) * self.area < 2**53:
            return sums(x).to(x.dtype)
        x = x.to(torch.int64)
        return (sums(x >> 26) << 26) + sums(x & ((1 << 26) - 1))


@dataclass(frozen=True)
class Flatten:
    start_dim: int = 1
    end_dim: int = -1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


@dataclass(frozen=True)
class ToChannels:
    """[N, C] → [N, C, 1, 1] (features back to channels, e.g. a squeeze-excite gate before its ``*``)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels(x)


@dataclass(frozen=True)
class ShiftCopy:
    """OMR's shift form on integer codes: the producer is requantized to the wide range [0, qmax + shift] and
    ``c ↦ cat(clip(c, 0, qmax), clip(c[:, index] − shift, 0, qmax))``, where ``shift`` = X_clip in code units
    (qmax − z of the consumer's input quantizer). Equal to quantizing ``cat(x, relu(x[:, index] − X_clip))``
    with step s, since rounding commutes with an integer shift — except half-even rounding at an exact tie
    (x/s − X_clip/s = 0.5 rounds to 0, x/s to qmax + 1): a table in front of the shift therefore holds the
    fake-quant model's own two codes, summed (see :mod:`qmap.quant.integer`)."""

    index: tuple[int, ...]
    shift: int
    qmax: int
    order: tuple[int, ...] | None = None  # output channel order (a grouped consumer's interleave), else as is

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        copies = (x[:, list(self.index)] - self.shift).clamp(0, self.qmax)
        out = torch.cat([x.clamp(max=self.qmax), copies], dim=1)
        return out if self.order is None else out[:, list(self.order)]


Op = Relu | Clamp | MaxPool | AvgPool | Flatten | ToChannels | ShiftCopy | Table


