"""Shared builders for the quantization tests: small models with non-trivial BN, calibrated fake-quant copies."""

from __future__ import annotations

import torch
from torch import nn

from qmap.models import build_model
from qmap.quant import QuantConfig, calibrate, quantize_model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (so fusion is not a no-op)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.6)
    return model.eval()


def small_model(name: str = "tiny_cnn", width: float = 0.5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(build_model(name, width=width), seed)


def images(n: int = 16, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def calibrated(model: nn.Module, cfg: QuantConfig, calib: torch.Tensor) -> nn.Module:
    qmodel = quantize_model(model, cfg)
    calibrate(qmodel, calib)
    return qmodel
