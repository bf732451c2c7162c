"""AdaRound's weight quantizer (Nagel et al., 2020): learnable per-weight rounding on a uniform grid.

    ŵ = (clip(⌊w/s⌋ + h(v) + z; q_min, q_max) − z) · s'                     (DOMR eq. 4; s' = s unless decoupled)
    h(v) = clip(σ(v)·(ζ − γ) + γ, 0, 1),  ζ = 1.1, γ = −0.1                 (rectified sigmoid)
    R(v) = Σ 1 − |2h(v) − 1|^β                                             (rounding regulariser, β annealed 20 → 2)

``v`` starts at σ⁻¹((frac(w/s) − γ)/(ζ − γ)), so that h(v) = frac(w/s) and the soft weight equals w inside the
clipping range (for an affine grid too: z is an integer, so it shifts ⌊w/s⌋ without changing the fraction).
:func:`harden_layer` ends the optimisation with hard rounding h = [v ≥ 0]: it rewrites ``layer.weight`` to
s·(q − z) and puts a plain :class:`~qmap.quant.Quantizer` back, so ``to_int(weight)`` (round to nearest of an
exact multiple of s, plus z) returns the learned integers q and every later stage (integer model, export,
OMR) sees ordinary modules.
"""

from __future__ import annotations

import torch
from torch import nn

from .quantizer import Quantizer

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(v) = clip(σ(v)(ζ − γ) + γ, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


class AdaRoundQuantizer(Quantizer):
    """A weight quantizer with learnable rounding variables ``alpha`` (the v of the paper, one per weight).

    ``soft`` (default) uses h(v) ∈ [0, 1]; ``soft = False`` uses the hard rounding [v ≥ 0] (what
    :func:`harden_layer` bakes in). ``to_int`` honours the learned rounding for the weight it was built on.
    """

    def __init__(self, base: Quantizer, weight: torch.Tensor):
        super().__init__(base.spec, channels=base.scale.numel(), ch_axis=base.ch_axis, name=base.name)
        self.scale = nn.Parameter(base.scale.detach().clone(), requires_grad=False)
        self.zero_point = base.zero_point.detach().clone()
        self.initialized = base.initialized.detach().clone()
        if base.dequant_scale is not None:
            self.dequant_scale = nn.Parameter(base.dequant_scale.detach().clone(),
                                              requires_grad=base.dequant_scale.requires_grad)
        self.enabled = base.enabled
        w = weight.detach() / self._shaped(self.scale, weight)
        frac = (w - torch.floor(w)).clamp(1e-6, 1 - 1e-6)  # σ⁻¹ is finite only inside (γ, ζ) ⊃ [0, 1]
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))
        self.soft = True

    def rounding(self) -> torch.Tensor:
        """The rounding offset added to ⌊w/s⌋: h(v) (soft) or [v ≥ 0] (hard)."""
        return rectified_sigmoid(self.alpha) if self.soft else (self.alpha >= 0).to(self.alpha.dtype)

    def regularizer(self, beta: float) -> torch.Tensor:
        """R(v) = Σ 1 − |2h(v) − 1|^β: zero only when every h(v) is exactly 0 or 1."""
        return (1 - (2 * rectified_sigmoid(self.alpha) - 1).abs().pow(beta)).sum()

    def _codes(self, x: torch.Tensor, rounding: torch.Tensor) -> torch.Tensor:
        s, z = self._shaped(self.scale, x), self._shaped(self.zero_point, x)
        return torch.clamp(torch.floor(x / s) + rounding + z, self.spec.qmin, self.spec.qmax)

    def to_int(self, x: torch.Tensor) -> torch.Tensor:
        return self._codes(x, (self.alpha >= 0).to(x.dtype)).to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        q = self._codes(x, self.rounding())
        return (q - self._shaped(self.zero_point, x)) * self._shaped(self.step, x)

    @property
    def on_grid(self) -> bool:
        """Only with the hard rounding: the soft h(v) puts the weights between grid points."""
        return not self.soft and super().on_grid

    def grid_codes(self, x: torch.Tensor) -> torch.Tensor | None:
        """q − z with the learned hard rounding (None while the rounding is soft)."""
        if not self.on_grid:
            return None
        with torch.no_grad():
            return self._codes(x, (self.alpha >= 0).to(x.dtype)) - self._shaped(self.zero_point, x)

    def to_plain(self) -> Quantizer:
        """A plain :class:`Quantizer` with the same spec and steps (the rounding is dropped)."""
        q = Quantizer(self.spec, channels=self.scale.numel(), ch_axis=self.ch_axis, name=self.name)
        q.set_qparams(self.scale.detach(), self.zero_point)
        if self.dequant_scale is not None:
            q.decouple()
            q.dequant_scale.data.copy_(self.dequant_scale.detach())
            q.dequant_scale.requires_grad_(False)
        q.enabled = self.enabled
        return q.to(self.scale.device)


def attach_adaround(layer: nn.Module) -> AdaRoundQuantizer:
    """Replace ``layer.weight_quantizer`` by an :class:`AdaRoundQuantizer` initialised on ``layer.weight``."""
    if not isinstance(layer.weight_quantizer, AdaRoundQuantizer):
        layer.weight_quantizer = AdaRoundQuantizer(layer.weight_quantizer, layer.weight).to(layer.weight.device)
    return layer.weight_quantizer


@torch.no_grad()
def harden_layer(layer: nn.Module) -> None:
    """Bake the hard rounding in: ``layer.weight ← s·(q − z)`` and a plain quantizer, so that afterwards
    ``weight_quantizer.to_int(layer.weight)`` returns the learned integers q and the forward pass is (q − z)·s'."""
    aq = layer.weight_quantizer
    if not isinstance(aq, AdaRoundQuantizer):
        return
    q = aq.to_int(layer.weight).to(layer.weight.dtype)
    shaped = aq._shaped
    layer.weight.data.copy_((q - shaped(aq.zero_point, q)) * shaped(aq.scale, q))
    layer.weight_quantizer = aq.to_plain()
