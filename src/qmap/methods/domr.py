"""DOMR (seed 004, Algorithm 1): decoupled quantization step + outlier-migrated reconstruction.

Stage 1   s_w per output channel by iterative MSE minimisation (eq. 1: grid search, then alternating
          q = clip(⌊w/s⌉), s = ⟨w, q⟩/⟨q, q⟩ — the ``mse`` weight observer), then decoupled into the fixed
          quant step s_w and a learnable dequant step s'_w = s_w (eq. 4).
Stage 2   OMR (optional, :func:`qmap.methods.omr.apply_omr`): channels of Conv→ReLU→Conv pairs whose
          calibration activations exceed X_clip get a migrated copy, one extra activation bit for them.
          With learned activation steps the copy reads X_clip = qmax·s_x live (shift form), as Algorithm 1
          re-forms b − x_clip at every iteration.
          DJOS: s'_w, s_x and the AdaRound variables α jointly minimise

              Δ = Σ_i ‖x^{i+1} − x̂^{i+1}‖²_F + λ·Σ R(α)                                       (eq. 6)

          summed over every layer i. ``granularity='network'`` is Algorithm 1 as written: each of T
          iterations passes a calibration batch through the whole network, the quantized path propagating
          x̂ and the FP path x (cached). ``'block'`` / ``'layer'`` minimise the same per-layer sum one stage /
          layer at a time (less memory: only one block's activations are cached and differentiated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..quant import QuantConfig, quant_layers
from .base import MethodResult
from .omr import OmrOptions
from .recon import ReconConfig, run_method

DJOS_DEFAULTS = {"granularity": "network", "loss_every_layer": True, "learn_rounding": True,
                 "learn_act_step": True, "learn_weight_step": True, "iters": 1000}


@dataclass
class Options(ReconConfig):
    """DOMR's ``method.options``: the reconstruction fields, ``omr`` and ``omr_options`` (apply_omr keywords)."""

    omr: bool = True
    omr_options: OmrOptions | None = None


def decouple_steps(qmodel: nn.Module) -> None:
    """Stage 1.2: every weight quantizer gets a learnable dequant step s'_w initialised to its s_w."""
    for _, layer in quant_layers(qmodel):
        layer.weight_quantizer.decouple()


def apply(model: nn.Module, calib: torch.Tensor, qcfg: QuantConfig, omr: bool = True,
          omr_options: dict | None = None, **options) -> MethodResult:
    """DOMR. ``omr``: apply OMR before DJOS (``omr_options`` go to ``apply_omr``: selective, budget, ...);
    ``options``: :class:`~qmap.methods.recon.ReconConfig` fields overriding :data:`DJOS_DEFAULTS`."""
    cfg = ReconConfig.from_options({**DJOS_DEFAULTS, **options})
    stage1 = QuantConfig.from_dict({**qcfg.to_dict(), "w_observer": "mse"})

    def prepare(qmodel: nn.Module) -> dict:
        decouple_steps(qmodel)
        if not omr:
            return {"omr": None}
        from .omr import apply_omr

        opts = {"selective": True, "budget": 1.0, "live_clip": cfg.learn_act_step, **(omr_options or {})}
        return {"omr": apply_omr(qmodel, calib=calib, **opts)}

    return run_method("domr" if omr else "domr-no-omr", model, calib, stage1, cfg, prepare)
