"""How closely an :class:`~qmap.quant.integer.IntegerModel` reproduces its fake-quant model.

For each layer l the fake-quant integers are ``to_int`` of the fake-quant model's input to layer l+1 (captured
by a forward pre-hook), i.e. ``round(fake_quant_output / step)``. Two comparisons:

- ``isolated``: integer layer l is fed the *fake-quant* input integers of layer l, so a mismatch is caused by
  that layer's own requantization (bias rounding, fixed-point multiplier, float round-off);
- ``end_to_end``: the integer model runs on its own, so earlier mismatches propagate.

Reported per layer: the fraction of output integers that differ and the largest difference (in LSB). For the
last layer the logits are compared in units of the last layer's accumulator step (end to end, those units are
fine enough that propagated 1-LSB differences show as many units: compare the arg-max there). A layer whose
output is not one next layer's input codes (it feeds a residual add, a concat, a lookup table) is compared on
its own input codes, end to end (``isolated`` is None).
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import ModelGraph
from .integer import IntegerModel
from .qmodules import quant_layers


@torch.no_grad()
def fake_quant_inputs(qmodel: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({layer: integer input codes of that layer in the fake-quant model}, fake-quant logits — before a trailing
    softmax / log-softmax, :meth:`~qmap.nn.ModelGraph.logits_module`)."""
    codes: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: codes.__setitem__(n, mod.input_quantizer.to_int(inp[0])))
             for n, m in quant_layers(qmodel)]
    try:
        logits = ModelGraph(qmodel).logits_module()(x)
    finally:
        for h in hooks:
            h.remove()
    return codes, logits


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.to(torch.int64) - b.to(torch.int64)).abs()
    return {"n": d.numel(), "mismatch_fraction": float((d > 0).double().mean()), "max_lsb": int(d.max())}


@torch.no_grad()
def compare_with_fake_quant(qmodel: nn.Module, imodel: IntegerModel, x: torch.Tensor) -> dict:
    """Agreement on float images ``x``: ``{"layers": [{layer, isolated, end_to_end}], "top1_agreement": f}``.

    ``top1_agreement`` is the fraction of images whose integer-model arg-max equals the fake-quant one.
    """
    codes, fq_logits = fake_quant_inputs(qmodel, x)
    out = imodel.run(x, return_intermediates=True)
    rows = []
    last = imodel.steps[-1].op
    for lay, trace in zip(imodel.layers, out.layers):
        if lay.feeds is not None or lay is last:
            iso = imodel.run_layer(lay, codes[lay.name]).y_int
            target = codes[lay.feeds] if lay.feeds is not None else torch.round(  # logits in accumulator units
                fq_logits.double() / out.logits_scale.to(fq_logits.device))
            rows.append({"layer": lay.name, "isolated": _diff(iso, target),
                         "end_to_end": _diff(trace.y_int, target)})
        else:
            rows.append({"layer": lay.name, "isolated": None, "end_to_end": _diff(trace.x_int, codes[lay.name])})
    same = out.logits.argmax(1) == fq_logits.argmax(1)
    return {"layers": rows, "top1_agreement": float(same.double().mean()), "n_images": len(x)}
