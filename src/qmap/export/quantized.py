"""The quantized model as safetensors: per layer the integer weights, their steps, the float bias and the
input quantizer's step/zero point; the QuantSpecs go in the file's metadata (JSON strings).

Tensor names: ``<layer>.w_int`` (int8 codes), ``<layer>.w_step`` (the step multiplying them: s' when
decoupled), ``<layer>.w_quant_step`` (s, the step used for rounding), ``<layer>.w_zero_point`` (z: the weight is
(w_int − z)·w_step), ``<layer>.bias``, ``<layer>.in_step``,
``<layer>.in_zero_point``. The metadata holds one key, ``qmap_layers``: a JSON object {layer: specs} (one
key, because safetensors orders several metadata keys differently from run to run). No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write_bytes
from ..quant import quant_layers


@torch.no_grad()
def quantized_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, m in quant_layers(qmodel):
        wq, iq = m.weight_quantizer, m.input_quantizer
        tensors[f"{name}.w_int"] = wq.to_int(m.weight).to(torch.int8).cpu()
        tensors[f"{name}.w_step"] = wq.step.detach().float().cpu()
        tensors[f"{name}.w_quant_step"] = wq.scale.detach().float().cpu()
        tensors[f"{name}.w_zero_point"] = wq.zero_point.detach().float().cpu()
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().float().cpu()
        tensors[f"{name}.in_step"] = iq.step.detach().float().cpu()
        tensors[f"{name}.in_zero_point"] = iq.zero_point.detach().float().cpu()
        meta[name] = {"type": type(m).__name__, "weight_spec": asdict(wq.spec), "input_spec": asdict(iq.spec),
                      "shape": list(m.weight.shape)}
    return {k: v.clone().contiguous() for k, v in tensors.items()}, {"qmap_layers": json.dumps(meta)}


def save_quantized(qmodel: nn.Module, path: str | Path) -> Path:
    """Write the integer weights + steps of ``qmodel`` to ``path`` (safetensors, atomically)."""
    from safetensors.torch import save

    tensors, meta = quantized_tensors(qmodel)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return Path(path)
