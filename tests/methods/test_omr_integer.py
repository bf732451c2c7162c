"""OMR's shift form (DOMR's live clip) lowered to the integer model: the codes match the fake-quant model."""

import pytest
import torch

from qmap.methods import get_method
from qmap.models import build_model
from qmap.progress import set_quiet
from qmap.quant import QuantConfig
from qmap.quant.agreement import compare_with_fake_quant
from qmap.quant.chain import ShiftCopy
from qmap.quant.integer import to_integer_model


@pytest.mark.parametrize("a_bits", [2, 4])
def test_integer_model_reproduces_omr_shift_form(a_bits):
    set_quiet(True)
    torch.manual_seed(0)
    x = torch.randn(48, 3, 32, 32)
    q = get_method("domr")(build_model("tiny_cnn").eval(), x, QuantConfig(w_bits=4, a_bits=a_bits), iters=3).model
    im = to_integer_model(q.eval())
    shifts = [op for lay in im.layers for op in lay.post_ops if isinstance(op, ShiftCopy)]
    assert shifts and all(op.shift == op.qmax for op in shifts)  # live clip X = qmax·s
    assert any(op.qmax == 2 ** a_bits - 1 for op in shifts)
    rows = compare_with_fake_quant(q, im, x[:16])["layers"]
    for row in rows[:-1]:  # every conv layer's output codes equal the fake-quant model's exactly
        assert row["isolated"]["mismatch_fraction"] == 0.0 and row["end_to_end"]["mismatch_fraction"] == 0.0, row
    assert rows[-1]["end_to_end"]["max_lsb"] <= 1  # logits: float32 round-off of the fake-quant model only
    with torch.no_grad():
        assert torch.equal(q(x[:16]).argmax(1), im.run(x[:16]).logits.argmax(1))


@pytest.mark.parametrize("a_bits", [2, 4])
def test_integer_model_reproduces_omr_after_gelu_tables(a_bits):
    """DOMR with OMR on the GELU CNN: the shift follows a GELU table (+ max-pool), so the table must give the
    next layer's codes up to qmax + X_clip for the shift to split; before, it gave 16-bit fine codes and the
    integer model of DOMR W4A4 scored 10 % where the fake-quant model scored 84 %. The pair whose copy would
    precede the functional global average pool is skipped (relu(v − X) does not commute with averaging)."""
    set_quiet(True)
    torch.manual_seed(0)
    x = torch.randn(48, 3, 32, 32)
    model = build_model("gelu_cnn", width=0.25).eval()
    res = get_method("domr")(model, x, QuantConfig(w_bits=4, a_bits=a_bits), iters=3)
    q, skipped = res.model, res.report["omr"]["skipped"]
    assert any("stages.2.3->fc1: skipped" in n and "adaptive_avgpool" in n for n in skipped), skipped
    im = to_integer_model(q.eval())
    assert sum(isinstance(st.op, ShiftCopy) for st in im.steps) == 5  # every conv → conv pair carries a copy
    rows = compare_with_fake_quant(q, im, x[:16])["layers"]
    for row in rows[:-1]:
        assert row["end_to_end"]["mismatch_fraction"] == 0.0, row
    with torch.no_grad():
        assert torch.equal(q(x[:16]).argmax(1), im.run(x[:16]).logits.argmax(1))
