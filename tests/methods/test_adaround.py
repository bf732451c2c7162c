"""AdaRoundQuantizer: rectified sigmoid, initialisation, regulariser, hardening; layer-wise AdaRound method."""

from __future__ import annotations

import pytest
import torch

from qmap.methods import get_method
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, Quantizer, QuantSpec, quantize_model
from qmap.quant.adaround import GAMMA, ZETA, AdaRoundQuantizer, attach_adaround, harden_layer, rectified_sigmoid

torch.set_num_threads(1)


def _weight_quantizer(w: torch.Tensor, bits: int = 4) -> Quantizer:
    q = Quantizer(QuantSpec(bits=bits, signed=True, per_channel=True, observer="mse"), channels=w.shape[0])
    q.init_from(w)
    return q


def test_rectified_sigmoid_range_and_saturation():
    v = torch.linspace(-20, 20, 401)
    h = rectified_sigmoid(v)
    assert h.min() == 0 and h.max() == 1
    assert torch.allclose(rectified_sigmoid(torch.zeros(1)), torch.tensor([0.5]))
    assert torch.allclose(h, torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1))


def test_soft_init_reproduces_weight_inside_clip_range():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    base = _weight_quantizer(w)
    aq = AdaRoundQuantizer(base, w)
    s = base.scale.view(-1, 1, 1, 1)
    inside = (w / s > base.spec.qmin) & (w / s < base.spec.qmax)
    err = (aq(w) - w).abs() / s
    assert inside.float().mean() > 0.9
    assert err[inside].max() < 1e-4  # h(v) = frac(w/s) up to the 1e-6 clamp that keeps σ⁻¹ finite
    # hard init rounds to nearest (frac ≥ 0.5 ⇔ v ≥ 0) except for exact ties
    assert torch.equal(aq.to_int(w), base.to_int(w))


def test_regulariser_zero_at_hard_values_and_max_at_half():
    w = torch.randn(2, 5)
    aq = AdaRoundQuantizer(_weight_quantizer(w), w)
    aq.alpha.data = torch.full_like(w, 30.0) * torch.sign(torch.randn_like(w))
    assert float(aq.regularizer(2.0).detach()) == pytest.approx(0.0, abs=1e-6)
    aq.alpha.data.zero_()
    assert float(aq.regularizer(2.0).detach()) == pytest.approx(w.numel())  # 1 − |2·0.5 − 1|^β = 1 per weight


@pytest.mark.parametrize("symmetric", [True, False])
def test_harden_gives_learned_integers_and_plain_quantizer(symmetric):
    torch.manual_seed(1)
    qmodel = quantize_model(tiny_cnn(0.5).eval(), QuantConfig(w_bits=3, a_bits=8, w_symmetric=symmetric))
    layer = qmodel.features[3]
    w0 = layer.weight.detach().clone()
    layer.weight_quantizer.decouple()
    aq = attach_adaround(layer)
    aq.alpha.data = torch.randn_like(aq.alpha) * 3  # an arbitrary learned rounding
    aq.dequant_scale.data *= 1.1                     # and a learned dequant step s' ≠ s
    s, z = aq.scale.view(-1, 1, 1, 1), aq.zero_point.view(-1, 1, 1, 1)
    assert bool((z != 0).any()) != symmetric
    expected = torch.clamp(torch.floor(w0 / s) + (aq.alpha >= 0).float() + z, aq.spec.qmin, aq.spec.qmax)
    assert torch.equal(aq.to_int(w0), expected.int())
    harden_layer(layer)
    wq = layer.weight_quantizer
    assert type(wq) is Quantizer and wq.dequant_scale is not None
    assert torch.equal(wq.to_int(layer.weight), expected.int())
    assert torch.allclose(wq(layer.weight), (expected - z) * wq.step.view(-1, 1, 1, 1), rtol=0, atol=1e-7)
    assert torch.equal(layer.fp_weight, w0)  # the FP original is kept for reports


def test_adaround_method_beats_rtn_on_tiny_model():
    torch.manual_seed(0)
    model = tiny_cnn(0.5).eval()
    calib = torch.randn(128, 3, 8, 8)
    qcfg = QuantConfig(w_bits=3, a_bits=8)
    ref = model(calib)
    rtn = get_method("rtn")(model, calib, qcfg).model
    ada = get_method("adaround")(model, calib, qcfg, iters=150, batch_size=32)
    with torch.no_grad():
        err_rtn = float(((rtn(calib) - ref) ** 2).mean())
        err_ada = float(((ada.model(calib) - ref) ** 2).mean())
    assert err_ada < 0.8 * err_rtn, (err_ada, err_rtn)
    assert [b["layers"] for b in ada.report["blocks"]] == [["features.0"], ["features.3"], ["features.7"],
                                                           ["features.10"], ["classifier"]]
    assert all(type(m.weight_quantizer) is Quantizer for m in ada.model.modules() if hasattr(m, "weight_quantizer"))
