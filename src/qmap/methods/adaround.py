"""AdaRound (Nagel et al., 2020), layer-wise: learn whether each weight rounds down or up.

The rounding quantizer itself (:class:`~qmap.quant.adaround.AdaRoundQuantizer`, the rectified sigmoid h(v),
the regulariser R(v), hardening) lives in :mod:`qmap.quant.adaround`; this method reconstructs each layer's
rounding on its own, with the calibrated activation steps fixed and the quantized network's inputs (see
:mod:`qmap.methods.recon`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QuantConfig
from .base import MethodResult
from .recon import ReconConfig, run_method


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, **options) -> MethodResult:
    """Layer-wise AdaRound: rounding only, activation steps fixed at their calibrated values.

    ``options`` are :class:`~qmap.methods.recon.ReconConfig` fields (iters, batch_size, work_dir, resume, ...)."""
    cfg = ReconConfig.from_options({"granularity": "layer", "learn_act_step": False, **options})
    return run_method("adaround", model, calib, qcfg, cfg)


def __getattr__(name: str):
    """``Options`` is :class:`~qmap.methods.recon.ReconConfig`, whose module imports this one (hence lazily)."""
    if name == "Options":
        from .recon import ReconConfig
        return ReconConfig
    raise AttributeError(name)
