"""Rounding functions with a straight-through estimator (STE): forward rounds, backward is the identity."""

from __future__ import annotations

import torch


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


ROUND_FNS = {"half_even": round_half_even, "half_away": round_half_away}


def round_ste(x: torch.Tensor, mode: str = "half_even") -> torch.Tensor:
    """``round(x)`` in the forward pass, gradient 1 in the backward pass (Bengio et al., 2013)."""
    return x + (ROUND_FNS[mode](x) - x).detach()
