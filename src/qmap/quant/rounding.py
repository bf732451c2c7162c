"""Rounding functions (the straight-through estimator that differentiates them is in :mod:`qmap.quant.quantizer`)."""

from __future__ import annotations

import torch


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


ROUND_FNS = {"half_even": round_half_even, "half_away": round_half_away}

