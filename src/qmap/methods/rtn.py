"""RTN: round-to-nearest post-training quantization — weight steps from the observer, activation steps
from calibration data, no optimisation. The baseline every other method is compared with."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QuantConfig, calibrate, quantize_model
from .base import MethodResult, Timer
from .options import signature_options


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, batch_size: int = 128) -> MethodResult:
    with Timer() as t:
        qmodel = quantize_model(model, qcfg)
        calibrate(qmodel, calib, batch_size=batch_size)
    return MethodResult(qmodel, {"method": "rtn", "seconds": t.seconds})


Options = signature_options(apply)
