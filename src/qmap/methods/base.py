"""The method interface: every PTQ method is ``apply(model, calib, qcfg, **options) -> MethodResult``.

``model`` is the FP model (BN or fused), ``calib`` float NCHW calibration images (normalised), ``qcfg`` a
:class:`~qmap.quant.QuantConfig`. A method returns a calibrated fake-quant model plus a report dict (per-layer
MSE, chosen α, added channels, time, ...). Methods never import the CLI or the hardware code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MethodResult:
    model: nn.Module
    report: dict = field(default_factory=dict)


Method = Callable[..., MethodResult]


class Timer:
    """Context manager measuring wall time into ``seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
