"""BRECQ (Li et al., 2021): block reconstruction. Each stage (a VGG stage between poolings, the classifier on
its own) is reconstructed as a whole — AdaRound rounding variables and activation steps learned jointly on
‖f̂(x̂) − f(x)‖² at the block output, with the quantized network's input x̂ (see :mod:`qmap.methods.recon`)."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QuantConfig
from .base import MethodResult
from .recon import ReconConfig, run_method

Options = ReconConfig  # method.options: the reconstruction fields


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, **options) -> MethodResult:
    """``options``: :class:`~qmap.methods.recon.ReconConfig` fields (iters, batch_size, work_dir, resume, ...)."""
    cfg = ReconConfig.from_options({"granularity": "block", "learn_act_step": True, **options})
    return run_method("brecq", model, calib, qcfg, cfg)
