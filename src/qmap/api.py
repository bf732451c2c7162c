"""The one-call Python API.

    >>> import qmap
    >>> qmodel, report = qmap.quantize(model, calib_images, method="domr", w_bits=4, a_bits=4)

``calib_images`` are float NCHW tensors normalised as the model expects (see :func:`qmap.data.to_tensor`).
Any :class:`~qmap.quant.QuantConfig` field may be passed as a keyword; the remaining keywords go to the
method (e.g. ``iters=``, ``omr=``, ``grid=``).
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from .methods import get_method
from .quant import QuantConfig


def quantize(model: nn.Module, calib: torch.Tensor, method: str = "rtn", qconfig: QuantConfig | None = None,
             **kwargs) -> tuple[nn.Module, dict]:
    """Quantize ``model`` with ``method``; returns ``(fake_quant_model, report)``."""
    qfields = {f.name for f in fields(QuantConfig)}
    q_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in qfields}
    if qconfig is None:
        qconfig = QuantConfig(**q_kwargs)
    elif q_kwargs:
        qconfig = QuantConfig.from_dict({**qconfig.to_dict(), **q_kwargs})
    result = get_method(method)(model, calib, qconfig, **kwargs)
    return result.model, result.report
