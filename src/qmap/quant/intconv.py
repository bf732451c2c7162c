"""Exact integer convolution / matrix products with float32 kernels.

A float32 sum of integers is exact while every partial sum stays below 2^24 in magnitude. For a layer with
K products per output and integer operands |x| ≤ X, |w| ≤ W, every partial sum is bounded by K·X·W, so
``op(x, w)`` in float32 is exact when K·X·W < 2^24. When it is not, x is split into base-2^d digits

    x = Σ_i x_i · 2^(d·i),   0 ≤ x_i < 2^d for i below the top digit (the top digit keeps the sign),

with d the largest width for which K·(2^d − 1)·W < 2^24; then ``op(x, w) = Σ_i op(x_i, w) · 2^(d·i)``, each
term exact in float32 and the sum formed in int64. (8-bit activations at K = 2304 take two float32 passes,
4-bit ones one pass.) If even d = 1 does not fit, float64 (exact below 2^53) is used.

Kernels whose internal transforms are not exact (cuDNN's Winograd/FFT, TF32, NNPACK) are switched off
while these products run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53


@contextlib.contextmanager
def exact_float_kernels(device: torch.device):
    """Disable TF32 and transform-based convolution algorithms for the duration of the block."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.backends.nnpack.flags(enabled=False))
        if device.type == "cuda":
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", prev)
        yield


def digit_width(terms: int, w_max: int) -> int:
    """The largest digit width d with terms·(2^d − 1)·w_max < 2^24 (0 when none fits)."""
    d = 0
    while terms * ((1 << (d + 1)) - 1) * max(1, w_max) < FLOAT32_EXACT and d < 31:
        d += 1
    return d


def split_digits(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """Base-2^d digits of int64 ``x``, least significant first: x = Σ digits[i] · 2^(d·i)."""
    digits, base = [], 1 << d
    while abs_max(x) >= base:
        lo = torch.remainder(x, base)
        digits.append(lo)
        x = torch.div(x - lo, base, rounding_mode="floor")
    digits.append(x)
    return digits


def abs_max(t: torch.Tensor) -> int:
    """max |t| (0 for an empty tensor), in one pass."""
    if t.numel() == 0:
        return 0
    lo, hi = torch.aminmax(t)
    return max(-int(lo), int(hi))


def exact_bilinear(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor,
                   terms: int, x_max: int | None = None) -> torch.Tensor:
    """``op(x, w)`` (a conv or linear map, bilinear in x and w) of integer tensors, exactly, as int64.

    ``terms`` is the number of products summed per output element (in_channels/groups · kernel area);
    ``x_max`` a bound on |x| (measured when not given).
    """
    x_max = abs_max(x) if x_max is None else x_max
    w_max = abs_max(w)
    with exact_float_kernels(x.device):
        if terms * x_max * w_max < FLOAT32_EXACT:
            return op(x.float(), w.float()).to(torch.int64)
        d = digit_width(terms, w_max)
        if d == 0:
            if terms * x_max * w_max >= FLOAT64_EXACT:
                raise OverflowError(f"integer products of {terms} terms up to {x_max}·{w_max} exceed 2^53")
            return op(x.double(), w.double()).to(torch.int64)
        wf = w.float()
        out = None
        for i, digit in enumerate(split_digits(x.to(torch.int64), d)):
            part = op(digit.float(), wf).to(torch.int64) << (d * i)
            out = part if out is None else out + part
        return out
