"""Requantization between integer layers: multiply an accumulator by a real factor M with integers only.

A real multiplier ``M > 0`` is stored as a fixed-point pair (gemmlowp / TFLite style)

    M ≈ m · 2^(−shift),   m an integer mantissa in [2^(B−1), 2^B)   (B = ``mantissa_bits``, 31 by default)

so ``round(acc · M)`` becomes ``round_shift(acc · m, shift)``: one integer multiply (64-bit product) and one
rounding right shift. The relative error of M is below 2^−B, so the integer result differs from the exact
``round(acc · M)`` only when ``acc · M`` lies within ``|acc| · M · 2^−B`` of a rounding boundary.

A product that does not fit 63 bits (wide values — a gate's product, a finely stepped sum — times a 31-bit
mantissa) is formed in two 31-bit halves, as a 32x64-bit multiply does in hardware: acc = a_hi·2^31 + a_lo,
acc·m + offset = q·2^31 + r (0 ≤ r < 2^31), and ``round_shift`` of ``2q + [r ≠ 0]`` by ``shift − 30`` is
exactly ``round_shift(acc·m + offset, shift)`` for every tie rule when ``shift ≥ 32`` (the sticky bit stands
for r, and no rounding boundary lies strictly between 2q and 2q + 2).

``pow2`` mode rounds M to a power of two (m = 2^(B−1), so the multiply is a shift); it is exact when every step
is a power of two (``QuantSpec.pow2``) and an approximation otherwise (``relative_error`` reports it).

Rounding of the shifted product, ``round_shift(p, k)`` ≈ p / 2^k:
``half_even`` (ties to even, as ``torch.round`` — the fake-quant default), ``half_away`` (ties away from zero,
TFLite's ``RoundingDivideByPOT``) or ``half_up`` (ties toward +∞: add 2^(k−1), arithmetic shift — the
cheapest in hardware). The converter uses the rounding mode of the quantizer it reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .intconv import abs_max

ROUND_SHIFT_MODES = ("half_even", "half_away", "half_up")
MAX_SHIFT = 92  # the two-half product's shift − 30 stays a valid int64 shift (≤ 62)
EXACT_FLOAT64 = 2**53  # every integer of smaller magnitude is a float64


def round_shift(p: torch.Tensor, shift: torch.Tensor, mode: str = "half_even") -> torch.Tensor:
    """``round(p / 2^shift)`` for int64 ``p`` and non-negative int64 ``shift`` (broadcast), with ``mode`` ties.

    With h = 2^(shift−1): half-up is (p + h) >> shift; a tie is (p + h) ≡ 0 (mod 2^shift); half-away moves
    negative ties down by one before the shift, half-even moves odd results of ties down by one after it.
    """
    if mode not in ROUND_SHIFT_MODES:
        raise ConfigError(f"unknown rounding {mode!r}; choose one of {', '.join(ROUND_SHIFT_MODES)}")
    shift = shift.to(torch.int64)
    if mode == "half_even" and p.numel() and max(-int(p.min()), int(p.max())) < EXACT_FLOAT64:
        # |p| < 2^53 is exact in float64 and p · 2^−shift is a power-of-two scaling (exact, no underflow at
        # shift ≤ 62), so torch.round's ties-to-even gives the same integer ~4x faster than the bit operations.
        return torch.round(p.double() * torch.exp2(-shift.double())).to(torch.int64)
    half = (torch.ones_like(shift) << shift) >> 1  # 0 when shift == 0 (nothing to round)
    t = p + half
    if mode == "half_away":
        t -= ((p < 0) & (half > 0)).to(p.dtype)
    out = t >> shift
    if mode == "half_even":
        tie = ((t & ((half << 1) - 1)) == 0) & (half > 0)
        out -= (tie & ((out & 1) == 1)).to(p.dtype)
    return out


@dataclass
class Requantizer:
    """``y = clamp(round_shift(acc · multiplier + offset, shift), qmin, qmax)`` per output channel (axis 1).

    ``multiplier`` / ``shift`` / ``offset`` are int64 [C] (or [1]); ``real`` is the float64 M they approximate.
    ``offset`` carries a sub-LSB part of the accumulator (the bias fraction that an integer bias in
    accumulator units loses): offset = round(frac · multiplier), so acc·m + offset ≈ (acc + frac)·M·2^shift.
    """

    multiplier: torch.Tensor
    shift: torch.Tensor
    real: torch.Tensor
    qmin: int
    qmax: int
    rounding: str = "half_even"
    offset: torch.Tensor | None = None

    @classmethod
    def from_real(cls, real: torch.Tensor, qmin: int, qmax: int, rounding: str = "half_even",
                  mantissa_bits: int = 31, pow2: bool = False, frac: torch.Tensor | None = None) -> Requantizer:
        """Fixed-point (or power-of-two) representation of the real multipliers ``real`` (float, > 0);
        ``frac`` (accumulator units, |frac| ≤ 1/2, per channel) becomes the ``offset``."""
        real = torch.as_tensor(real, dtype=torch.float64).reshape(-1).cpu()
        if not torch.isfinite(real).all() or (real <= 0).any():
            raise ConfigError("requantization multipliers must be finite and > 0")
        if not 1 <= mantissa_bits <= 31:
            raise ConfigError(f"mantissa_bits must be in 1..31, got {mantissa_bits}")
        mult, shift = [], []
        for m in real.tolist():
            if pow2:  # a power-of-two mantissa: the multiply is a left shift
                k = mantissa_bits - 1 - round(math.log2(m))
                mant = 1 << (mantissa_bits - 1)
            else:
                fraction, exp = math.frexp(m)  # m = fraction · 2^exp, fraction in [0.5, 1)
                mant = round(fraction * (1 << mantissa_bits))
                k = mantissa_bits - exp
                if mant == 1 << mantissa_bits:
                    mant, k = mant >> 1, k - 1
            if k < 0:
                raise ConfigError(f"requantization multiplier {m:.4g} is too large (needs a left shift)")
            if k > MAX_SHIFT:  # |acc · m| < 2^92 (61-bit values): the result is 0 anyway
                mant, k = 0, MAX_SHIFT
            mult.append(mant)
            shift.append(k)
        mult_t = torch.tensor(mult, dtype=torch.int64)
        offset = None
        if frac is not None:
            offset = torch.round(torch.as_tensor(frac, dtype=torch.float64).cpu() * mult_t.double()).to(torch.int64)
        return cls(mult_t, torch.tensor(shift, dtype=torch.int64), real, int(qmin), int(qmax), rounding, offset)

    @property
    def effective(self) -> torch.Tensor:
        """The multipliers actually applied, m · 2^−shift (float64)."""
        return self.multiplier.double() * torch.exp2(-self.shift.double())

    def relative_error(self) -> float:
        """max |m·2^−shift − M| / M over channels."""
        return float(((self.effective - self.real).abs() / self.real).max())

    def to(self, device: torch.device | str) -> Requantizer:
        self.multiplier, self.shift = self.multiplier.to(device), self.shift.to(device)
        if self.offset is not None:
            self.offset = self.offset.to(device)
        return self

    def _per_channel(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, -1, *([1] * (x.dim() - 2))) if t.numel() > 1 else t.reshape(())

    def rescale(self, acc: torch.Tensor) -> torch.Tensor:
        """``round_shift(acc · multiplier + offset, shift)`` as int64, unclamped (a change of step)."""
        m, k = self._per_channel(self.multiplier, acc), self._per_channel(self.shift, acc)
        acc = acc.to(torch.int64)
        offset = self._per_channel(self.offset, acc) if self.offset is not None else 0
        peak = abs_max(acc)
        if peak.bit_length() + int(self.multiplier.max()).bit_length() <= 62:  # |acc·m + offset| < 2^62:
            plain = round_shift(acc * m + offset, k.clamp(max=62), self.rounding)  # a shift past 62 gives 0
            return plain if int(self.shift.max()) <= 62 else torch.where(k > 62, 0, plain)
        if int(self.shift.min()) < 32 or peak.bit_length() > 61:
            raise ConfigError(f"requantization of {peak.bit_length()}-bit values with shift "
                              f"{int(self.shift.min())} overflows 64-bit integers")
        low = (1 << 31) - 1
        b = (acc & low) * m + offset           # < 2^62
        q = (acc >> 31) * m + (b >> 31)        # acc·m + offset = q·2^31 + (b & low)
        return round_shift(2 * q + ((b & low) != 0).to(torch.int64), k - 30, self.rounding)

    def __call__(self, acc: torch.Tensor, lower: int | None = None) -> torch.Tensor:
        """Requantize int64 ``acc`` [N, C, ...]; ``lower`` raises the clamp floor (0 folds a ReLU)."""
        y = self.rescale(acc)
        lo = self.qmin if lower is None else max(self.qmin, lower)
        return y.clamp(lo, self.qmax).to(torch.int32)
