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


def test_integer_model_shift_after_table_and_average_pool():
    """conv → h-swish → AdaptiveAvgPool2d (a module: the shift follows it) → flatten → linear, as in the
    MobileNet-style net's head: the shift's input is the table's fine values averaged, not the consumer's codes,
    so it is requantized to them (wide clamp) first. Before, the copies were cut from the fine values: on the
    trained MobileNet, DOMR + OMR at W4A4 scored 62.9 % as integer model vs 77.0 % fake-quant (model_zoo.json
    before the fix)."""
    from torch import nn

    from qmap.methods.omr import apply_omr
    from qmap.quant import calibrate, quantize_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.Hardswish(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    x = torch.randn(64, 3, 8, 8)
    q = quantize_model(model, QuantConfig(w_bits=4, a_bits=3, first_last_bits=None))
    calibrate(q, x)
    q[6].input_quantizer.set_qparams(q[6].input_quantizer.scale * 0.5)  # values beyond X_clip to copy
    report = apply_omr(q, pairs=[("2", "6")], selective=False, calib=x, form="shift", live_clip=True)
    assert report["pairs"][0]["extra_channels"] == 16
    im = to_integer_model(q, input_shape=(3, 8, 8))
    rows = compare_with_fake_quant(q, im, x)["layers"]
    for row in rows[:-1]:
        assert row["end_to_end"]["mismatch_fraction"] == 0.0, row
    with torch.no_grad():
        assert torch.equal(q(x).argmax(1), im.run(x).logits.argmax(1))


def test_integer_model_onnx_and_file_reproduce_omr_into_depthwise(tmp_path):
    """DOMR with OMR on the MobileNet-style net: the h-swish inputs of its depthwise convs (expand → h-swish →
    depthwise) now carry copies — every channel, reordered so each group reads its originals then their copies,
    the depthwise weight doubled per group. The integer model's codes equal the fake-quant model's; the
    quantized-model file and ONNX reproduce its outputs."""
    from qmap.export import export_onnx, verify_onnx
    from qmap.export.quantized import load_quantized, save_quantized
    set_quiet(True)
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    model = build_model("mobilenet_cifar", width=0.25).eval()
    res = get_method("domr")(model, x, QuantConfig(w_bits=4, a_bits=3), iters=2,
                             omr_options={"selective": False})
    q = res.model.eval()
    grouped = [r for r in res.report["omr"]["pairs"] if getattr(q.get_submodule(r["consumer"]), "groups", 1) > 1]
    assert grouped and all(r["extra_channels"] == r["channels"] for r in grouped)
    im = to_integer_model(q)
    assert any(isinstance(st.op, ShiftCopy) and st.op.order for st in im.steps) or any(
        isinstance(op, ShiftCopy) and op.order for lay in im.layers for op in lay.post_ops)
    rows = compare_with_fake_quant(q, im, x[:8])["layers"]
    for row in rows[:-1]:
        assert row["end_to_end"]["mismatch_fraction"] == 0.0, row
    with torch.no_grad():
        out = q(x[:8])
        assert torch.equal(out.argmax(1), im.run(x[:8]).logits.argmax(1))
    path = save_quantized(q, tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(load_quantized(path, model_fn=lambda: build_model("mobilenet_cifar", width=0.25)).model(
            x[:8]), out)
    pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")
    export_onnx(q, tmp_path / "m.onnx", x[:2])
    check = verify_onnx(tmp_path / "m.onnx", q, x[:8])
    assert check["top1_agreement"] == 1.0 and check["max_rel_diff"] <= 5e-3


def test_integer_model_keeps_the_fake_quant_copy_at_a_rounding_tie():
    """conv → h-swish table → OMR shift → conv, with the consumer's step set so that the largest table value y
    sits exactly on a rounding tie of its copy: (y − X)/s = 0.5. Half-even rounding gives the original
    clamp(round(y/s)) = qmax and the copy round(0.5) = 0, whereas round(y/s) = qmax + 1 split by ShiftCopy gives
    (qmax, 1). Learned steps settle on such ties (only 2^b values reach the shift): on the trained MobileNet-style
    net, DOMR + OMR at W4A2 scored 26.0 % as integer model vs 22.9 % fake-quant (model_zoo.json) before the table
    took the fake-quant model's own copy codes."""
    from torch import nn

    from qmap.methods.omr import apply_omr
    from qmap.quant import calibrate, quantize_model
    from qmap.quant.shift import OutlierShift

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval()
    x = torch.randn(64, 3, 8, 8)
    q = quantize_model(model, QuantConfig(w_bits=4, a_bits=2, first_last_bits=None))
    calibrate(q, x)
    apply_omr(q, pairs=[("0", "2")], selective=False, calib=x, form="shift", live_clip=True)
    shift = next(m for m in q.modules() if isinstance(m, OutlierShift))
    tq = q[2].input_quantizer
    seen = []
    hook = shift.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        q(x)
    hook.remove()
    y = seen[0].max().reshape(1)
    qmax = tq.spec.qmax
    s = (y / (qmax + 0.5)).reshape(())
    for _ in range(64):  # the float32 neighbour of y / (qmax + 0.5) on which the copy's rounding is an exact tie
        tq.set_qparams(s)
        if float(torch.relu(y - shift.clip()) / tq.scale.reshape(())) == 0.5:
            break
        s = torch.nextafter(s, torch.tensor(0.0))
    else:
        pytest.fail("no float32 step puts the copy exactly on a tie")
    assert int(tq.to_int(torch.relu(y - shift.clip()))) == 0 < int(tq.to_int(y, headroom=qmax)) - qmax  # a tie
    im = to_integer_model(q, input_shape=(3, 8, 8))
    rows = compare_with_fake_quant(q, im, x)["layers"]
    for row in rows[:-1]:
        assert row["end_to_end"]["mismatch_fraction"] == 0.0, row
