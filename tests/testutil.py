"""Helpers shared by test files (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import torch
from torch import nn


def randomise_bn(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (so fusion and α-scaling have something to get wrong);
    returns the model in eval mode."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model.eval()
