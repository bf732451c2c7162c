"""Measurements on models that reports show: per-layer output MSE of a quantized model against FP, and each
layer's quantizer settings (bits, steps, zero points)."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import float_mode, quant_layers


@torch.no_grad()
def layer_output_mse(qmodel: nn.Module, x: torch.Tensor) -> list[dict]:
    """Per quantized layer: MSE between its output in the quantized model and in the same model with every
    quantizer off (the FP model, BN fused), both fed ``x``; also the relative MSE (MSE / mean square of FP)."""
    layers = quant_layers(qmodel)
    outs: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs[n].append(o.detach().clone())) for n, m in layers]
    try:
        with float_mode(qmodel):
            qmodel(x)
        qmodel(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n, m in layers:
        fp, q = outs[n]
        mse = float(((q - fp) ** 2).mean())
        rows.append({"layer": n, **quant_settings(m), "mse": mse,
                     "rel_mse": mse / max(float((fp ** 2).mean()), 1e-30)})
    return rows


def quant_settings(layer: nn.Module) -> dict:
    """Bits of weight/input, the steps multiplying the integers (s'; per-channel weights: min and max), the
    input zero point and whether the weights have non-zero zero points."""
    wq, iq = layer.weight_quantizer, layer.input_quantizer
    w_step = wq.step.detach().float()
    return {"w_bits": wq.spec.bits, "a_bits": iq.spec.bits, "a_signed": iq.spec.signed,
            "w_step_min": float(w_step.min()), "w_step_max": float(w_step.max()),
            "x_step": float(iq.step.detach().reshape(-1)[0]), "x_zero_point": float(iq.zero_point.reshape(-1)[0]),
            "w_zero_points": bool(wq.zero_point.any())}
