"""The fake-quant ``Quantizer`` module: quant step ``s``, optional decoupled dequant step ``s'``, zero point.

    q  = clamp(round(x / s) + z, qmin, qmax)      (the integers the hardware sees: ``to_int``)
    x̂ = (q − z) · s'                              (``forward``; s' = s unless decoupled)

The rounding uses a straight-through estimator, so gradients reach ``x`` (identity inside the clipping
range, zero outside) and the steps (the LSQ gradient, Esser et al. 2020). ``decouple()`` freezes the quant
step ``s`` and adds a learnable dequant step ``s'`` initialised to ``s`` (DOMR, eq. 4).
"""

from __future__ import annotations

import torch
from torch import nn

from .observers import Observer, observe_tensor
from .rounding import ROUND_FNS, round_ste
from .spec import QuantSpec


class Quantizer(nn.Module):
    def __init__(self, spec: QuantSpec, channels: int = 1, ch_axis: int = 0, name: str = "",
                 auto_sign: bool = False):
        super().__init__()
        self.spec = spec
        self.auto_sign = auto_sign  # activations: signed iff calibration saw a negative value
        self.ch_axis = ch_axis
        self.name = name
        n = channels if spec.per_channel else 1
        self.scale = nn.Parameter(torch.ones(n), requires_grad=False)
        self.dequant_scale: nn.Parameter | None = None
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("initialized", torch.tensor(False))
        self.enabled = True
        self.observer: Observer | None = None

    # ----- shapes -----
    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.numel() == 1:
            return t.reshape(())
        shape = [1] * x.dim()
        shape[self.ch_axis] = -1
        return t.reshape(shape)

    @property
    def step(self) -> torch.Tensor:
        """The step that multiplies the integers: s' when decoupled, else s."""
        return self.dequant_scale if self.dequant_scale is not None else self.scale

    # ----- calibration -----
    def observe(self, enable: bool = True) -> None:
        """Switch observation on (``forward`` records statistics and returns x unchanged) or finish it."""
        if enable:
            self.observer = Observer(self.spec)
        elif self.observer is not None:
            if self.auto_sign:
                self.spec = self.spec.with_(signed=bool(self.observer.lo.min() < 0))
            self.set_qparams(*self.observer.compute(self.spec))
            self.observer = None

    def init_from(self, x: torch.Tensor) -> None:
        """Initialise the step from one whole tensor (weights)."""
        self.set_qparams(*observe_tensor(x, self.spec, self.name or "tensor"))

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> None:
        scale = torch.as_tensor(scale, dtype=self.scale.dtype, device=self.scale.device).reshape(-1)
        if scale.numel() != self.scale.numel():
            scale = scale.expand(self.scale.numel()) if scale.numel() == 1 else scale
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ValueError(f"quantizer {self.name}: step must be finite and > 0")
        self.scale.data = scale.clone()
        if zero_point is not None:
            self.zero_point.data = torch.as_tensor(zero_point, dtype=self.zero_point.dtype,
                                                   device=self.zero_point.device).reshape(-1).expand_as(scale).clone()
        if self.dequant_scale is not None:
            self.dequant_scale.data = self.scale.data.clone()
        self.initialized.fill_(True)

    def decouple(self) -> None:
        """Freeze the quant step s and add a learnable dequant step s' = s (DOMR stage 1.2)."""
        self.scale.requires_grad_(False)
        self.dequant_scale = nn.Parameter(self.scale.detach().clone())

    # ----- quantization -----
    def to_int(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes q = clamp(round(x/s) + z, qmin, qmax), as int32."""
        s, z = self._shaped(self.scale, x), self._shaped(self.zero_point, x)
        q = torch.clamp(ROUND_FNS[self.spec.rounding](x / s) + z, self.spec.qmin, self.spec.qmax)
        return q.to(torch.int32)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return (q.to(self.step.dtype) - self._shaped(self.zero_point, q)) * self._shaped(self.step, q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x, self.name or "activation")
            return x
        if not self.enabled:
            return x
        s, z = self._shaped(self.scale, x), self._shaped(self.zero_point, x)
        if not self._needs_grad(x):
            return self._fake_quant_no_grad(x, s, z)
        q = torch.clamp(round_ste(x / s, self.spec.rounding) + z, self.spec.qmin, self.spec.qmax)
        return (q - z) * self._shaped(self.step, x)

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad
                                            or (self.dequant_scale is not None and self.dequant_scale.requires_grad))

    def _fake_quant_no_grad(self, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The same values as the STE path, with fewer passes and in-place temporaries (inference)."""
        q = ROUND_FNS[self.spec.rounding](x / s)
        if self.spec.symmetric:
            return q.clamp_(self.spec.qmin, self.spec.qmax).mul_(self._shaped(self.step, x))
        return q.add_(z).clamp_(self.spec.qmin, self.spec.qmax).sub_(z).mul_(self._shaped(self.step, x))

    def extra_repr(self) -> str:
        sp = self.spec
        kind = ("int" if sp.signed else "uint") + str(sp.bits) + (" narrow" if sp.narrow else "")
        return (f"{kind}, {'per-channel' if sp.per_channel else 'per-tensor'}, observer={sp.observer}"
                + (", pow2" if sp.pow2 else "") + (", decoupled" if self.dequant_scale is not None else "")
                + ("" if self.enabled else ", disabled"))
