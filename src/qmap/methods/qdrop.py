"""QDrop (Wei et al., 2022): BRECQ's block reconstruction with activation quantization randomly dropped.

During reconstruction each element of the block input is the FP input with probability p (else the quantized
network's input), and every activation quantizer in the block passes its input through unquantized with
probability p (p = 0.5), which flattens the loss landscape the rounding is learned on. At test time every
quantizer is on (see :mod:`qmap.methods.recon`)."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QuantConfig
from .base import MethodResult
from .recon import ReconConfig, run_method

Options = ReconConfig  # method.options: the reconstruction fields

DROP_PROB = 0.5


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, **options) -> MethodResult:
    """``options``: :class:`~qmap.methods.recon.ReconConfig` fields (``drop_prob`` defaults to 0.5)."""
    cfg = ReconConfig.from_options({"granularity": "block", "learn_act_step": True, "drop_prob": DROP_PROB,
                                    **options})
    return run_method("qdrop", model, calib, qcfg, cfg)
