"""The accelerator's shape and number formats: :class:`ArraySpec`.

An R×C array (``rows`` = input channels per tile, ``cols`` = output channels per tile) multiplies
``w_bits``-bit signed two's-complement weights by ``a_bits``-bit unsigned activations and accumulates in
``psum_bits``-bit signed registers. ``dataflow`` is ``"ws"`` (weight-stationary, the RTL core) or ``"os"``
(output-stationary, golden model only). ``overflow`` says what a partial sum outside the psum range does:
``"error"`` (the golden model raises :class:`HardwareError` naming the bits needed and available) or
``"saturate"`` (every PE register and SFU accumulator clamps to the range, in the golden model and the RTL alike).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import HardwareError

DATAFLOWS = ("ws", "os")
OVERFLOW_POLICIES = ("error", "saturate")
MAX_ARRAY_DIM = 256  # rows / cols: the golden model keeps R×C per-cycle registers; larger is a typo, not an array


@dataclass(frozen=True)
class ArraySpec:
    rows: int = 8
    cols: int = 8
    w_bits: int = 4
    a_bits: int = 4
    psum_bits: int = 16
    dataflow: str = "ws"
    overflow: str = "error"

    def __post_init__(self):
        for name in ("rows", "cols", "w_bits", "a_bits", "psum_bits"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise HardwareError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
        if not (1 <= self.rows <= MAX_ARRAY_DIM and 1 <= self.cols <= MAX_ARRAY_DIM):
            raise HardwareError(f"array must be 1x1 .. {MAX_ARRAY_DIM}x{MAX_ARRAY_DIM}, got {self.rows}x{self.cols}")
        for name, lo, hi in (("w_bits", 2, 8), ("a_bits", 2, 8), ("psum_bits", 8, 48)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise HardwareError(f"{name}={v} outside the supported range {lo}..{hi}")
        if self.dataflow not in DATAFLOWS:
            raise HardwareError(f"unknown dataflow {self.dataflow!r}; known: {', '.join(DATAFLOWS)}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise HardwareError(f"unknown overflow policy {self.overflow!r}; known: {', '.join(OVERFLOW_POLICIES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def w_range(self) -> tuple[int, int]:
        return int_range(self.w_bits, signed=True)

    @property
    def a_range(self) -> tuple[int, int]:
        return int_range(self.a_bits, signed=False)

    @property
    def psum_range(self) -> tuple[int, int]:
        return int_range(self.psum_bits, signed=True)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of a ``bits``-bit integer: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def signed_bits_needed(lo: int, hi: int) -> int:
    """Fewest two's-complement bits holding every integer in [lo, hi] (1 for [0, 0] or [-1, 0])."""
    return max(1, int(hi).bit_length() + 1 if hi > 0 else 1, (-int(lo) - 1).bit_length() + 1 if lo < 0 else 1)


def check_range(values: np.ndarray, bits: int, signed: bool, what: str) -> None:
    """Raise :class:`HardwareError` naming ``what`` and the first offending index if a value does not fit."""
    lo, hi = int_range(bits, signed)
    v = np.asarray(values)
    bad = (v < lo) | (v > hi)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "signed" if signed else "unsigned"
        raise HardwareError(f"{what}: value {int(v[idx])} at index {idx} does not fit {bits}-bit {kind} "
                            f"[{lo}, {hi}]")
