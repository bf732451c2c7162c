"""DOMR: stage 1 (MSE steps, decoupled dequant steps), DJOS network-wise and block-wise, with and without OMR."""

from __future__ import annotations

import pytest
import torch

from qmap.methods import get_method
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, quant_layers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = tiny_cnn(0.5).eval()
    calib = torch.randn(128, 3, 8, 8)
    with torch.no_grad():
        ref = model(calib)
    return model, calib, ref


def _err(qmodel, calib, ref) -> float:
    with torch.no_grad():
        return float(((qmodel(calib) - ref) ** 2).mean())


def test_domr_learns_decoupled_steps_and_beats_rtn(setup):
    model, calib, ref = setup
    qcfg = QuantConfig(w_bits=3, a_bits=4)
    res = get_method("domr")(model, calib, qcfg, omr=False, iters=150)
    layers = quant_layers(res.model)
    for _, m in layers:
        wq = m.weight_quantizer
        assert wq.dequant_scale is not None and not wq.dequant_scale.requires_grad
        # the fake-quant weight is exactly the integers q − z times the learned dequant step
        shape = (-1,) + (1,) * (m.weight.dim() - 1)
        q = wq.to_int(m.weight).float() - wq.zero_point.view(shape)
        assert torch.allclose(wq(m.weight), q * wq.step.view(shape))
    moved = [float((m.weight_quantizer.dequant_scale / m.weight_quantizer.scale - 1).abs().max()) for _, m in layers]
    assert max(moved) > 1e-3  # s'_w was learned away from s_w
    assert res.report["options"]["granularity"] == "network"
    block = res.report["blocks"][0]
    assert block["layers"] == [n for n, _ in layers] and block["error_after"] < block["error_before"]
    rtn = get_method("rtn")(model, calib, qcfg).model
    assert _err(res.model, calib, ref) < 0.9 * _err(rtn, calib, ref)


def test_domr_blockwise_form_sums_every_layer_error(setup):
    model, calib, _ = setup
    res = get_method("domr")(model, calib, QuantConfig(w_bits=3, a_bits=4), omr=False, granularity="block", iters=20)
    assert [b["layers"] for b in res.report["blocks"]] == [["features.0", "features.3"],
                                                          ["features.7", "features.10"], ["classifier"]]
    assert res.report["method"] == "domr-no-omr"


def test_domr_with_selective_omr(setup):
    pytest.importorskip("qmap.methods.omr", reason="OMR transform (qmap.methods.omr) not in this build")
    from qmap.quant.shift import OutlierShift

    model, calib, ref = setup
    qcfg = QuantConfig(w_bits=3, a_bits=2)
    res = get_method("domr")(model, calib, qcfg, iters=60, omr_options={"budget": 0.5})
    omr = res.report["omr"]
    assert 0 < omr["extra_channels"] and omr["extra_macs"] > 0
    assert all(r["extra_channels"] <= 0.5 * r["channels"] for r in omr["pairs"])
    assert any(isinstance(m, OutlierShift) for m in res.model.modules())
    out = res.model(calib)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    block = res.report["blocks"][0]
    assert block["error_after"] < block["error_before"]
