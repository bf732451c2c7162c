"""``QuantSpec``: what a uniform quantizer does (bits, sign, granularity, observer, rounding)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError

OBSERVERS = ("minmax", "percentile", "mse")
ROUNDINGS = ("half_even", "half_away")
ACCUMULATOR_BITS = (16, 32)


@dataclass(frozen=True)
class QuantSpec:
    """A uniform quantizer ``q = clamp(round(x/s) + z, qmin, qmax)``, ``x̂ = (q − z)·s'``.

    bits        2..8 for weights/activations (16/32 are allowed for accumulators only).
    signed      signed two's-complement range (weights) vs unsigned 0..2^b−1 (post-ReLU activations).
    symmetric   zero point fixed at 0; ``False`` gives an affine (asymmetric) quantizer.
    narrow      restricted signed range −(2^(b−1)−1)..2^(b−1)−1 (e.g. −7..7 at 4 bits, as the 8×8 core uses).
    per_channel one step per output channel (axis 0 of a weight) instead of one per tensor.
    observer    how the clipping range is initialised: ``minmax``, ``percentile`` or ``mse`` (Lp search).
    pow2        round the step to a power of two (a hardware shift).
    rounding    ``half_even`` (torch.round, banker's rounding: 2.5→2) or ``half_away`` (2.5→3, −2.5→−3).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow: bool = False
    per_channel: bool = False
    observer: str = "minmax"
    pow2: bool = False
    rounding: str = "half_even"
    percentile: float = 99.99
    p_norm: float = 2.0
    accumulator: bool = False

    def __post_init__(self):
        ok_bits = range(2, 9) if not self.accumulator else (*range(2, 9), *ACCUMULATOR_BITS)
        if not isinstance(self.bits, int) or self.bits not in ok_bits:
            raise ConfigError(f"bit width {self.bits!r} is not supported: use 2..8"
                              + (" (or 16/32 for accumulators)" if self.accumulator else ""))
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"unknown rounding {self.rounding!r}; choose one of {', '.join(ROUNDINGS)}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.narrow and not self.signed:
            raise ConfigError("a narrow range applies to signed quantizers only")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    def with_(self, **changes) -> QuantSpec:
        return replace(self, **changes)
