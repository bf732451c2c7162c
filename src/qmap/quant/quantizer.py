"""The fake-quant ``Quantizer`` module: quant step ``s``, optional decoupled dequant step ``s'``, zero point.

    q  = clamp(round(x / s) + z, qmin, qmax)      (the integers the hardware sees: ``to_int``)
    x̂ = (q − z) · s'                              (``forward``; s' = s unless decoupled)

The rounding uses a straight-through estimator, so gradients reach ``x`` (identity inside the clipping
range, zero outside) and the steps (the LSQ gradient, Esser et al. 2020). ``decouple()`` freezes the quant
step ``s`` and adds a learnable dequant step ``s'`` initialised to ``s`` (DOMR, eq. 4).

With n = clamp(⌊x/s⌉ + z, qmin, qmax) − z and m = [n = ⌊x/s⌉] (not clipped), the gradients are

    ∂x̂/∂x = m·s'/s,    ∂x̂/∂s' = n,    ∂x̂/∂s = −m·(x/s)·s'/s          (s' = s: ∂x̂/∂s = n − m·x/s, LSQ)

When a gradient is needed, :class:`~qmap.quant.ste.FakeQuantSTE` computes the forward pass and these
gradients directly. ``drop_prob`` > 0 (QDrop, set by the reconstruction engine) returns the input unquantized
per element with that probability, the mask drawn from ``drop_gen``.
"""

from __future__ import annotations

import torch
from torch import nn

from .observers import Observer, observe_tensor
from .rounding import ROUND_FNS
from .spec import QuantSpec
from .ste import FakeQuantSTE, drop_mask


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
        self.drop_prob = 0.0                         # QDrop: pass x through unquantized with this probability
        self.drop_gen: torch.Generator | None = None

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
    def to_int(self, x: torch.Tensor, headroom: int = 0) -> torch.Tensor:
        """The integer codes q = clamp(round(x/s) + z, qmin, qmax + headroom), as int32 (``headroom``: codes an
        OMR shift later splits into the original and its copy)."""
        s, z = self._shaped(self.scale, x), self._shaped(self.zero_point, x)
        q = torch.clamp(ROUND_FNS[self.spec.rounding](x / s) + z, self.spec.qmin, self.spec.qmax + headroom)
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
        keep_fp = None
        if self.drop_prob > 0:
            keep_fp = drop_mask(x, self.drop_prob, self.drop_gen)
        elif not self.needs_grad(x):
            return self._grid(x).mul_(self._shaped(self.step, x))
        step = s if self.dequant_scale is None else self._shaped(self.dequant_scale, x)
        return FakeQuantSTE.apply(x, s, step, None if self.spec.symmetric else z, self.spec.qmin, self.spec.qmax,
                                  self.spec.rounding, keep_fp)

    def needs_grad(self, x: torch.Tensor) -> bool:
        """Whether autograd needs this quantizer's output (x or a step requires a gradient)."""
        return torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad
                                            or (self.dequant_scale is not None and self.dequant_scale.requires_grad))

    @property
    def on_grid(self) -> bool:
        """Whether ``forward`` returns n·s' with integer n (not observing, enabled, no QDrop dropping). A subclass
        that overrides ``forward`` without also overriding ``grid_codes`` is not assumed to be on the grid."""
        def owner(attr: str) -> type:
            return next(c for c in type(self).__mro__ if attr in c.__dict__)
        return (issubclass(owner("grid_codes"), owner("forward")) and self.observer is None and self.enabled
                and self.drop_prob == 0)

    def grid_codes(self, x: torch.Tensor) -> torch.Tensor | None:
        """n = clamp(⌊x/s⌉ + z, qmin, qmax) − z as a float tensor (no gradient), so that the fake-quant output is
        exactly n·s'; None unless :attr:`on_grid`."""
        return self._grid(x) if self.on_grid else None

    @torch.no_grad()
    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """clamp(⌊x/s⌉ + z, qmin, qmax) − z, float, in place on one temporary."""
        q = ROUND_FNS[self.spec.rounding](x / self._shaped(self.scale, x))
        if self.spec.symmetric:
            return q.clamp_(self.spec.qmin, self.spec.qmax)
        z = self._shaped(self.zero_point, x)
        return q.add_(z).clamp_(self.spec.qmin, self.spec.qmax).sub_(z)

    def code_bound(self) -> float:
        """max |n| over the b-bit range: the largest integer ``grid_codes`` can return."""
        z = self.zero_point.abs().max().item()
        return max(abs(self.spec.qmin), abs(self.spec.qmax)) + z

    def extra_repr(self) -> str:
        sp = self.spec
        kind = ("int" if sp.signed else "uint") + str(sp.bits) + (" narrow" if sp.narrow else "")
        return (f"{kind}, {'per-channel' if sp.per_channel else 'per-tensor'}, observer={sp.observer}"
                + (", pow2" if sp.pow2 else "") + (", decoupled" if self.dequant_scale is not None else "")
                + ("" if self.enabled else ", disabled"))
