"""Inference accumulates the integer codes exactly (qmap.quant.qmodules): y = op(n_x, n_w)·s'_x·s'_w + b.

Checked: the result does not depend on how the convolution library sums (contiguous vs channels-last input give
bit-identical outputs, which a float accumulation of x̂·ŵ does not guarantee); it equals op(x̂, ŵ) + b computed
in float64 to two float32 roundings; a layer whose partial sums could pass 2^24 accumulates in float64; and
quantizers that are not on their grid (soft AdaRound, a subclass with its own forward, QDrop) keep op(x̂, ŵ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qmap.quant import QuantConfig, QuantConv2d, Quantizer, calibrate, quant_layers, quantize_model
from qmap.quant.adaround import attach_adaround, harden_layer


def _model(groups: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=groups), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()


def _quantized(bits: int = 4, groups: int = 1, **cfg) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(32, 3, 8, 8)
    qmodel = quantize_model(_model(groups), QuantConfig(w_bits=bits, a_bits=bits, first_last_bits=None,
                                                        w_observer="minmax", a_observer="minmax", **cfg))
    calibrate(qmodel, x)
    return qmodel, x


def _float_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """op(x̂, ŵ) + b in float64 from the fake-quant operands."""
    xh = layer.input_quantizer(x).double()
    wh = layer.weight_quantizer(layer.weight).double()
    b = layer.bias.double()
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(xh, wh, b)
    return F.linear(xh, wh, b)


def test_independent_of_summation_order():
    for groups in (1, 16):  # dense and depthwise
        qmodel, x = _quantized(groups=groups)
        conv = qmodel[2]
        with torch.no_grad():
            y = qmodel[1](qmodel[0](x))
            a = conv(y)
            b = conv(y.contiguous(memory_format=torch.channels_last))
        assert conv.accumulates_exactly()
        assert torch.equal(a, b.contiguous())


def test_equals_float64_accumulation_to_two_roundings():
    qmodel, x = _quantized(bits=3, w_symmetric=False)
    with torch.no_grad():
        h = x
        for m in qmodel:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                ref = _float_reference(m, h)
                out = m(h)
                assert torch.allclose(out.double(), ref, rtol=4e-7, atol=4e-7 * float(ref.abs().max()))
            else:
                out = m(h)
            h = out


def test_gradient_path_keeps_fake_quant_operands():
    qmodel, x = _quantized()
    conv = qmodel[0]
    with torch.no_grad():
        exact = conv(x)
    x_grad = x.clone().requires_grad_(True)
    out = conv(x_grad)  # autograd needs the STE: op(x̂, ŵ)
    out.sum().backward()
    assert x_grad.grad is not None
    assert torch.allclose(out.detach(), exact, rtol=1e-5, atol=1e-5)


def test_wide_accumulators_use_float64():
    """8-bit codes over a 128·9 fan-in reach 255·127·1152 > 2^24: the accumulation switches to float64."""
    layer = nn.Conv2d(128, 4, 3, padding=1, bias=False)
    layer.weight.data.fill_(0.5)  # every weight code at the top of the 8-bit range
    qmodel = quantize_model(nn.Sequential(layer).eval(),
                            QuantConfig(w_bits=8, a_bits=8, first_last_bits=None, w_observer="minmax",
                                        a_observer="minmax"))
    x = 4 + 0.01 * torch.rand(2, 128, 6, 6)  # non-negative: unsigned codes near 255
    calibrate(qmodel, x)
    q = qmodel[0]
    with torch.no_grad():
        n_x, n_w, m = q.exact_operands(x)
        assert n_x.dtype == torch.float64 and n_w.dtype == torch.float64
        acc = F.conv2d(n_x, n_w, padding=1)
        assert acc.abs().max() >= 2 ** 24  # a float32 accumulation would have rounded
        assert torch.equal(q(x), acc.float() * m.reshape(1, -1, 1, 1))


def test_off_grid_quantizers_keep_the_float_path():
    qmodel, x = _quantized()
    conv = qmodel[2]
    with torch.no_grad():
        h = qmodel[1](qmodel[0](x))
    aq = attach_adaround(conv)  # soft rounding: weights between grid points
    assert not conv.accumulates_exactly()
    with torch.no_grad():
        assert torch.allclose(conv(h), _float_reference(conv, h).float(), rtol=1e-5, atol=1e-5)
    aq.soft = False
    assert conv.accumulates_exactly()
    with torch.no_grad():
        hard = conv(h)
    harden_layer(conv)
    with torch.no_grad():
        assert torch.equal(conv(h), hard)  # the learned hard rounding, before and after baking it in

    class Shifted(Quantizer):  # its own forward, no grid_codes: not assumed to be on the grid
        def forward(self, x):
            return super().forward(x) + 0.25 * self._shaped(self.step, x)

    wq = conv.weight_quantizer
    shifted = Shifted(wq.spec, channels=wq.scale.numel(), name=wq.name)
    shifted.load_state_dict(wq.state_dict())
    conv.weight_quantizer = shifted
    assert not conv.accumulates_exactly()
    with torch.no_grad():
        assert torch.allclose(conv(h), _float_reference(conv, h).float(), rtol=1e-5, atol=1e-5)
    conv.weight_quantizer = wq
    conv.input_quantizer.drop_prob = 0.5  # QDrop: elements pass unquantized
    assert not conv.accumulates_exactly()


def test_every_layer_of_a_calibrated_model_accumulates_exactly():
    qmodel, _ = _quantized(bits=2)
    assert all(m.accumulates_exactly() for _, m in quant_layers(qmodel))
