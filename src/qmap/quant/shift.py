"""OMR's shift form as a module: x ↦ cat(x, relu(x[:, index] − X)) (see :mod:`qmap.methods.omr` for the maths).

It lives with the quantization primitives because it reads a :class:`~qmap.quant.Quantizer`'s live clip and
states its own integer form (:class:`~qmap.quant.chain.ShiftCopy`) for the integer model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .chain import ShiftCopy
from .quantizer import Quantizer


def quantizer_clip(q: Quantizer) -> torch.Tensor:
    """Upper clip X = (qmax − z)·s of a per-tensor quantizer, in quant-step units s (not the dequant step)."""
    return (q.spec.qmax - q.zero_point.reshape(())) * q.scale.reshape(())


class OutlierShift(nn.Module):
    """x ↦ cat(x, relu(x[:, index] − X), dim=1): the migrated copies of channels ``index`` (shift form of OMR),
    optionally reordered by ``order`` (output channel j is channel order[j] of that concatenation: a grouped
    consumer takes each group's copies next to its originals).

    X is the fixed ``x_clip`` or, given ``quantizer``, its live clip (qmax − z)·s at every call.
    """

    def __init__(self, index: torch.Tensor, x_clip: float | None = None, quantizer: Quantizer | None = None,
                 order: torch.Tensor | None = None):
        super().__init__()
        if (x_clip is None) == (quantizer is None):
            raise ValueError("give exactly one of x_clip and quantizer")
        self.register_buffer("index", index.detach().long().clone())
        self.register_buffer("order", order.detach().long().clone() if order is not None else None)
        self.register_buffer("x_clip", torch.tensor(float(x_clip if x_clip is not None else 0.0)))
        self.quantizer = [quantizer] if quantizer is not None else None  # a list: not registered as a child

    def clip(self) -> torch.Tensor:
        return quantizer_clip(self.quantizer[0]) if self.quantizer else self.x_clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([x, torch.relu(x.index_select(1, self.index) - self.clip())], dim=1)
        return out if self.order is None else out.index_select(1, self.order)

    def integer_op(self) -> ShiftCopy:
        """The integer form for :mod:`qmap.quant.integer` (live clip only: X_clip is then qmax − z codes)."""
        if not self.quantizer:
            raise ConfigError("integer model: an OMR shift with a fixed x_clip has no exact integer form "
                              "(use live_clip=True)")
        q = self.quantizer[0]
        z = int(q.zero_point.reshape(-1)[0])
        order = None if self.order is None else tuple(int(i) for i in self.order.tolist())
        return ShiftCopy(tuple(int(i) for i in self.index.tolist()), q.spec.qmax - z, q.spec.qmax, order)

    def extra_repr(self) -> str:
        x = "live" if self.quantizer else f"{float(self.x_clip):.4g}"
        return f"channels={len(self.index)}, x_clip={x}"
