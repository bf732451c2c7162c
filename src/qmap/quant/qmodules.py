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

Inference (no gradient needed) with both operands on their integer grids (``Quantizer.grid_codes``:
x̂ = n_x·s'_x, ŵ = n_w·s'_w) accumulates the integers exactly instead of the dequantized floats:

          y = op(n_x, n_w) · m + b,   m = s'_x·s'_w (per output channel, one float32 product)

— the same real number as op(x̂, ŵ), rounded twice (the product with m, the bias) instead of at every product and
partial sum. op on integer-valued floats is exact while every partial sum stays below 2^24 in magnitude, which
``max|n_x| · Σ|n_w|`` (per output channel) bounds; above that bound the accumulation runs in float64 (exact to
2^53). So the output does not depend on the convolution library's summation order, and the integer model, the
ONNX export (``ConvInteger`` / ``MatMulInteger`` then the same ``· m + b``) and this module compute the same
accumulators. Training (STE gradients) and soft-rounding or QDrop quantizers keep op(x̂, ŵ).
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

    def _adopt(self, layer: nn.Module, w_spec: QuantSpec, a_spec: QuantSpec, name: str):
        """This (freshly built, same-shaped) layer with ``layer``'s weight and bias and its quantizers set up."""
        self.weight.data.copy_(layer.weight.data)
        if layer.bias is not None:
            self.bias.data.copy_(layer.bias.data)
        self._setup(w_spec, a_spec, name)
        return self

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The float layer's operation on given operands (conv or linear)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """op(n_x, n_w)·m + b from the integer codes when :meth:`exact_operands` allows, else op(x̂, ŵ) + b."""
        exact = self.exact_operands(x)
        if exact is not None:
            n_x, n_w, m = exact
            return self._output(self._from_accumulator(self._op(n_x, n_w, None), m))
        return self._output(self._op(self.input_quantizer(x), self.quantized_weight(), self.bias))

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

    def accumulates_exactly(self) -> bool:
        """Whether inference accumulates the integer codes (both quantizers on their grids, per-tensor input)."""
        wq, xq = self.weight_quantizer, self.input_quantizer
        return (isinstance(xq, Quantizer) and isinstance(wq, Quantizer) and xq.scale.numel() == 1
                and xq.on_grid and wq.on_grid)

    def accumulator_step(self) -> torch.Tensor:
        """m = s'_x·s'_w per output channel ([C_out], float32 as the layer): one accumulator unit."""
        return (self.input_quantizer.step.detach().reshape(()) * self.weight_quantizer.step.detach()).expand(
            self.weight.shape[0])

    def exact_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(n_x, n_w, m)`` for the exact integer accumulation (module docstring), m shaped [C_out]; None when
        a gradient is needed or an operand is not on its integer grid (then forward uses op(x̂, ŵ))."""
        wq, xq = self.weight_quantizer, self.input_quantizer
        if not self.accumulates_exactly():
            return None
        if torch.is_grad_enabled() and (self.weight.requires_grad or wq.needs_grad(self.weight) or xq.needs_grad(x)):
            return None
        n_w, n_x = wq.grid_codes(self.weight), xq.grid_codes(x)
        m = self.accumulator_step()
        if xq.code_bound() * n_w.abs().flatten(1).sum(1).max().item() >= 2 ** 24:
            n_x, n_w = n_x.double(), n_w.double()
        return n_x, n_w, m

    def _from_accumulator(self, acc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """acc · m + b in the layer's dtype, per output channel (channel axis 1)."""
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        y = acc.to(m.dtype) * m.reshape(shape)
        return y + self.bias.reshape(shape) if self.bias is not None else y

    def set_quant_enabled(self, weight: bool = True, act: bool = True) -> None:
        self.weight_quantizer.enabled = weight
        for q in self.activation_quantizers():
            q.enabled = act


def numeric_padding(conv: nn.Conv2d) -> tuple[int, ...] | str:
    """``conv.padding`` as numbers where they say the same: ``'valid'`` is 0 and ``'same'`` is d·(k − 1)/2 per
    side when that is whole (odd kernels). An even ``'same'`` kernel pads its extra row / column on one side only,
    which a symmetric numeric padding cannot say: it stays the string (and the integer model refuses it)."""
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if all(t % 2 == 0 for t in total):
            return tuple(t // 2 for t in total)
    return conv.padding


class QuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_spec: QuantSpec, a_spec: QuantSpec, name: str = "") -> QuantConv2d:
        """The quantized copy of ``conv`` (string padding made numeric where exact: :func:`numeric_padding`)."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, numeric_padding(conv),
                   conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                   device=conv.weight.device, dtype=conv.weight.dtype)._adopt(conv, w_spec, a_spec, name)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, w, b)


class QuantLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, lin: nn.Linear, w_spec: QuantSpec, a_spec: QuantSpec, name: str = "") -> QuantLinear:
        return cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device=lin.weight.device,
                   dtype=lin.weight.dtype)._adopt(lin, w_spec, a_spec, name)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)


QUANT_MODULES = (QuantConv2d, QuantLinear)
FLOAT_TO_QUANT = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized layers of ``model`` in execution order (``model.layer_order``, recorded by
    :func:`~qmap.quant.quantize_model` from the model graph; definition order for a model built otherwise)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_MODULES)]
    rank = {n: i for i, n in enumerate(getattr(model, "layer_order", ()))}
    return sorted(layers, key=lambda nm: rank.get(nm[0], len(rank)))
