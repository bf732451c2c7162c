"""The one-call Python API.

    >>> import qmap
    >>> qmodel, report = qmap.quantize(model, calib, method="domr", w_bits=4, a_bits=4)

``model`` is any ``nn.Module`` built from the supported operations (:data:`qmap.nn.SUPPORTED`; anything else is
refused with one line naming the operation, before any work). ``calib`` holds normalised float images as the
model expects them: a tensor (or NumPy array) [N, C, H, W], a ``DataLoader`` or any iterable of batches (a batch
is a tensor or an ``(images, labels, ...)`` tuple), or a ``Dataset`` of single [C, H, W] images. Any
:class:`~qmap.quant.QuantConfig` field may be passed as a keyword; the remaining keywords go to the method (e.g.
``iters=``, ``omr=``, ``grid=``); an unknown keyword is refused with the list of valid ones. ``progress=False``
silences the progress bars.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields

import numpy as np
import torch
from torch import nn

from .config import build_section
from .errors import ConfigError, reject_unknown_keys
from .methods import get_method, method_options
from .nn import ModelGraph, require_module
from .preflight import check_method_options
from .progress import quiet
from .quant import QuantConfig, freeze


def _batch_images(batch) -> torch.Tensor | object:
    """A batch's images: the batch itself, or the first item of an ``(images, labels, ...)`` tuple; a NumPy array
    becomes a tensor (same memory)."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return torch.from_numpy(images) if isinstance(images, np.ndarray) else images


def calibration_tensor(calib: torch.Tensor | np.ndarray | Iterable) -> torch.Tensor:
    """The calibration images of ``calib`` (a tensor or NumPy array, a DataLoader or an iterable of batches, or a
    Dataset of single ``[C, H, W]`` images) as one tensor."""
    if isinstance(calib, (torch.Tensor, np.ndarray)):
        batches = [_batch_images(calib)]
    else:
        try:
            batches = [_batch_images(b) for b in calib]
        except TypeError:
            raise ConfigError(f"calibration data must be a tensor, a DataLoader or an iterable of batches, "
                              f"not {type(calib).__name__}") from None
    if not batches:
        raise ConfigError("calibration data holds no batches")
    for b in batches:
        if not (isinstance(b, torch.Tensor) and b.is_floating_point()):
            found = f"{b.dtype} tensor" if isinstance(b, torch.Tensor) else type(b).__name__
            raise ConfigError(f"calibration data must hold float image tensors (normalised as the model expects; "
                              f"a batch is a tensor or an (images, labels) tuple), got a {found}")
    if len(batches) > 1 and all(b.dim() == 3 for b in batches):  # a Dataset of single [C, H, W] images
        batches = [torch.stack(batches)] if len({b.shape for b in batches}) == 1 else batches
    images = torch.cat(batches) if len(batches) > 1 else batches[0]
    if images.dim() != 4 or not len(images):
        raise ConfigError(f"calibration images must be a batch [N, C, H, W], got shape {tuple(images.shape)}")
    return images


def quantize(model: nn.Module, calib: torch.Tensor | Iterable, method: str = "rtn",
             qconfig: QuantConfig | None = None, progress: bool = True, **kwargs) -> tuple[nn.Module, dict]:
    """Quantize ``model`` with ``method``; returns ``(fake_quant_model, report)``."""
    require_module(model)
    apply = get_method(method)
    qfields = {f.name for f in fields(QuantConfig)}
    reject_unknown_keys(kwargs, qfields | {f.name for f in fields(method_options(method))},
                        f"option(s) for method {method!r}")
    if qconfig is not None and not isinstance(qconfig, QuantConfig):
        raise ConfigError(f"qconfig must be a qmap.QuantConfig, not {type(qconfig).__name__}")
    # the checks of a run config's quant and method.options sections: types, ranges, the classes' own checks
    q_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in qfields}
    qconfig = build_section(QuantConfig, {**(qconfig.to_dict() if qconfig is not None else {}), **q_kwargs}, "quant")
    check_method_options(method, kwargs)
    param = next(model.parameters(), None)
    device, dtype = (torch.device("cpu"), torch.float32) if param is None else (param.device, param.dtype)
    images = calibration_tensor(calib).to(dtype)  # float64 / float16 images: the model's own float type
    # unsupported operations, or a model that cannot run on the calibration images: one clear error before any work
    ModelGraph(model.eval(), images[:1].to(device))
    with quiet(not progress):
        result = apply(model.eval(), images, qconfig, **kwargs)
    return freeze(result.model), result.report

