"""Quantized layers: a Conv2d/Linear that fake-quantizes its input activation and its weight.

``QuantConv2d`` / ``QuantLinear`` subclass ``nn.Conv2d`` / ``nn.Linear`` so code that walks a model by layer
type keeps working. Each holds

- ``weight``, ``bias``     the (fused) FP parameters that methods may rewrite (α-scaling, OMR, ...);
- ``fp_weight``            the FP original weight (non-persistent buffer), for reconstruction and reports;
- ``weight_quantizer``     a :class:`~qmap.quant.quantizer.Quantizer` (or a subclass, e.g. AdaRound's);
- ``input_quantizer``      the quantizer of the activation entering the layer;
- ``output_quantizer``     ``None``, or the quantizer of the layer's output when a non-piecewise-linear activation
                           (GELU, Hardswish, SiLU, Hardsigmoid, Sigmoid) follows it: the activation then sees
                           b-bit codes, which the integer model maps through a 2^b-entry lookup table, exactly.

forward:  y = op(Q_x(x), Q_w(W)) + b   — the bias stays in float (the integer model puts it in accumulator units);
          then y = Q_y(y) when there is an output quantizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import Quantizer
from .spec import QuantSpec


class _QuantMixin:
    weight_quantizer: Quantizer
    input_quantizer: Quantizer

    output_quantizer: Quantizer | None

    def _setup(self, w_spec: QuantSpec, a_spec: QuantSpec, name: str) -> None:
        self.layer_name = name
        self.output_quantizer = None
        self.weight_quantizer = Quantizer(w_spec, channels=self.weight.shape[0], ch_axis=0, name=f"{name}.weight")
        self.input_quantizer = Quantizer(a_spec, channels=1, name=f"{name}.input", auto_sign=True)
        self.register_buffer("fp_weight", self.weight.detach().clone(), persistent=False)

    def add_output_quantizer(self, spec: QuantSpec) -> None:
        self.output_quantizer = Quantizer(spec, channels=1, name=f"{self.layer_name}.output", auto_sign=True)

    def activation_quantizers(self) -> list[Quantizer]:
        """The input quantizer, and the output quantizer when there is one."""
        out = getattr(self, "output_quantizer", None)  # None too for a layer rebuilt without _setup
        return [self.input_quantizer] + ([out] if out is not None else [])

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        out = getattr(self, "output_quantizer", None)
        return out(y) if out is not None else y

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def set_quant_enabled(self, weight: bool = True, act: bool = True) -> None:
        self.weight_quantizer.enabled = weight
        for q in self.activation_quantizers():
            q.enabled = act


class QuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_spec: QuantSpec, a_spec: QuantSpec, name: str = "") -> QuantConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        q.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            q.bias.data.copy_(conv.bias.data)
        q._setup(w_spec, a_spec, name)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output(self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias))


class QuantLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, w_spec: QuantSpec, a_spec: QuantSpec, name: str = "") -> QuantLinear:
        q = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device=lin.weight.device,
                dtype=lin.weight.dtype)
        q.weight.data.copy_(lin.weight.data)
        if lin.bias is not None:
            q.bias.data.copy_(lin.bias.data)
        q._setup(w_spec, a_spec, name)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output(F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias))


QUANT_MODULES = (QuantConv2d, QuantLinear)
FLOAT_TO_QUANT = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized layers of ``model`` in execution order (``model.layer_order``, recorded by
    :func:`~qmap.quant.quantize_model` from the model graph; definition order for a model built otherwise)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_MODULES)]
    rank = {n: i for i, n in enumerate(getattr(model, "layer_order", ()))}
    return sorted(layers, key=lambda nm: rank.get(nm[0], len(rank)))
