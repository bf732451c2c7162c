"""ONNX export: the file computes the fake-quant model's function in onnxruntime.

Tolerances (stated in docs/onnx.md):
- a layer whose input and weight are both on their integer grids is written as ConvInteger / MatMulInteger on
  the codes, then ``· s'_x·s'_w + b`` — what qmap's inference computes (exact integer accumulation, the same two
  float roundings). Such models are **bit-exact** (Δ = 0) in onnxruntime, with and without its default
  optimisations, whatever the steps;
- other layers (8-bit affine weights whose q − z leaves INT8, unquantized inputs) keep Q/DQ + float Conv/Gemm
  with the bias as int32 in accumulator units: only float summation order differs, ~1e-7 relative, but where
  it moves a value across a rounding boundary of the next quantizer that element changes by one step, so the
  bound is |Δlogit| ≤ REL_TOL·max|logit| with identical top-1; GELU's erf form (opset < 20) likewise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from qmap.errors import ConfigError
from qmap.models import build_model
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, Quantizer, calibrate, quant_layers, quantize_model

onnx = pytest.importorskip("onnx", reason="optional 'onnx' extra not installed")
pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")

from qmap.export import export_onnx, verify_onnx  # noqa: E402

REL_TOL = 5e-3


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(160, 3, 32, 32)


def quantized(images, act="relu", **cfg) -> nn.Module:
    torch.manual_seed(1)
    model = tiny_cnn(width=0.5, act=act).eval()
    with torch.no_grad():  # non-trivial BN statistics so fusion gives per-channel biases and scales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    # min-max observers keep the test fast; the export does not depend on how steps were found
    qmodel = quantize_model(model, QuantConfig(**{"first_last_bits": None, "w_observer": "minmax",
                                                  "a_observer": "minmax", **cfg}))
    calibrate(qmodel, images[:64])
    return qmodel


def export_and_verify(qmodel, images, tmp_path, optimize=False, **kw) -> tuple[dict, dict]:
    path = tmp_path / "model.onnx"
    report = export_onnx(qmodel, path, images[:2], **kw)
    return report, verify_onnx(path, qmodel, images, batch_size=64, threads=1, optimize=optimize)


@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (2, 2), (3, 6)])
def test_matches_fake_quant(images, tmp_path, bits):
    report, check = export_and_verify(quantized(images, w_bits=bits[0], a_bits=bits[1]), images, tmp_path)
    assert check["max_abs_diff"] == 0.0  # every layer accumulates integers: bit-exact
    assert {layer["op"] for layer in report["layers"]} == {"ConvInteger", "MatMulInteger"}
    assert report["bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert report["output_shape"] == ["N", 10]
    clips = report["op_counts"].get("Clip", 0)
    assert clips == (0 if bits[1] == 8 else 5)  # b < 8: one integer-domain Clip per quantized input


@pytest.mark.parametrize("w_bits", [2, 3, 4])
def test_affine_weights_fold_zero_points_into_codes(images, tmp_path, w_bits):
    """onnxruntime's ConvInteger takes one weight zero point per tensor: per-channel z is folded into the
    stored codes q − z, which is what the integer model and the array hold."""
    from onnx import numpy_helper

    qmodel = quantized(images, w_bits=w_bits, a_bits=4, w_symmetric=False)
    _, check = export_and_verify(qmodel, images, tmp_path)
    assert check["max_abs_diff"] == 0.0
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "model.onnx").graph.initializer}
    nonzero = 0
    for name, m in quant_layers(qmodel):
        wq = m.weight_quantizer
        codes = inits[f"{name}.weight.codes"].astype(np.int64)
        expected = (wq.to_int(m.weight) - wq._shaped(wq.zero_point, m.weight)).long().numpy()
        np.testing.assert_array_equal(codes.T if codes.ndim == 2 else codes, expected)
        nonzero += int(wq.zero_point.any())
    assert nonzero  # the affine grid did put zero points in


def test_wide_affine_codes_fall_back_to_dequantize_linear(images, tmp_path):
    """8-bit affine weights whose q − z leaves INT8 keep Q/DQ + float Conv with the zero point in
    DequantizeLinear and the bias in accumulator units — close, not bit-exact (float summation order)."""
    qmodel = quantized(images, w_bits=8, a_bits=8, w_symmetric=False)
    wq = qmodel.features[3].weight_quantizer
    wq.zero_point.fill_(-40)  # q up to 127 → q − z up to 167: not INT8
    report, check = export_and_verify(qmodel, images, tmp_path)
    assert check["max_rel_diff"] <= REL_TOL and check["top1_agreement"] == 1.0
    assert {layer["name"]: layer["op"] for layer in report["layers"]}["features.3"] == "Conv"
    graph = onnx.load(tmp_path / "model.onnx").graph
    zps = {t.name for t in graph.initializer if t.name.endswith(".zero_point")}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".int")]
    assert any(len(n.input) == 3 and n.input[2] in zps for n in weight_dq)


@pytest.mark.parametrize("bits", [(4, 4), (8, 8)])
def test_bit_exact_with_pow2_steps(images, tmp_path, bits):
    """Power-of-two steps and zero biases make every float op exact, so any numerics slip would show."""
    qmodel = quantized(images, w_bits=bits[0], a_bits=bits[1], pow2=True)
    for _, m in quant_layers(qmodel):
        m.bias.data.zero_()
    _, check = export_and_verify(qmodel, images, tmp_path)
    assert check["max_abs_diff"] == 0.0


def test_decoupled_dequant_step(images, tmp_path):
    """DOMR's decoupled quantizer: integers from s, dequantization with s' ≠ s — bit-exact, pow2 or not."""
    qmodel = quantized(images, w_bits=4, a_bits=4, pow2=True)
    gen = torch.Generator().manual_seed(2)
    for _, m in quant_layers(qmodel):
        m.bias.data.zero_()
        for q in (m.weight_quantizer, m.input_quantizer):
            q.decouple()
            factor = 2.0 ** torch.randint(-1, 2, q.scale.shape, generator=gen)
            q.dequant_scale.data = q.scale.data * factor
    report, check = export_and_verify(qmodel, images, tmp_path)
    assert all(layer["weight"]["decoupled"] and layer["input"]["decoupled"] for layer in report["layers"])
    assert check["max_abs_diff"] == 0.0
    for _, m in quant_layers(qmodel):  # arbitrary (non-pow2) s'
        for q in (m.weight_quantizer, m.input_quantizer):
            q.dequant_scale.data = q.scale.data * (1 + 0.1 * torch.rand(q.scale.shape, generator=gen))
    _, check = export_and_verify(qmodel, images, tmp_path)
    assert check["max_abs_diff"] == 0.0  # exact accumulation: bit-identical for any s'


@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_onnxruntime_default_optimisations_agree(images, tmp_path, bits):
    """onnxruntime's default session (graph optimisations on) computes what the graph as written computes."""
    _, check = export_and_verify(quantized(images, w_bits=bits[0], a_bits=bits[1]), images, tmp_path, optimize=True)
    assert check["max_rel_diff"] <= REL_TOL
    assert check["top1_agreement"] == 1.0
    assert check["images_close"] >= 0.98


def test_bias_is_int32_in_accumulator_units(images, tmp_path):
    """A layer on the Q/DQ path (here: q − z beyond INT8) stores its bias as DequantizeLinear(b_int, s'_x·s'_w)
    with the integer model's b_int, and b_int·s'_x·s'_w + fraction gives back the float bias; metadata carries
    what the caller passed."""
    from onnx import numpy_helper

    from qmap.quant.integer import to_integer_model

    qmodel = quantized(images, w_bits=8, a_bits=8, w_symmetric=False)
    for _, m in quant_layers(qmodel):  # q − z beyond INT8 everywhere: every layer takes the Q/DQ path
        m.weight_quantizer.zero_point.fill_(-40)
    meta = {"normalization": {"mean": [0.5], "std": [0.25]}, "quant": {"w_bits": 8}}
    report = export_onnx(qmodel, tmp_path / "m.onnx", images[:2], metadata=meta)
    assert {layer["op"] for layer in report["layers"]} == {"Conv", "Gemm"}
    model = onnx.load(tmp_path / "m.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    imodel = to_integer_model(qmodel)
    for name, m in quant_layers(qmodel):
        b_int = inits[f"{name}.bias.int"]
        assert b_int.dtype == np.int32
        np.testing.assert_array_equal(b_int, imodel.layer(name).bias_int.numpy())
        fraction = inits.get(f"{name}.bias.fraction", np.zeros(1, np.float32)).reshape(-1)
        rebuilt = b_int * inits[f"{name}.bias.step"] + fraction
        np.testing.assert_allclose(rebuilt, m.bias.detach().numpy(), rtol=1e-6, atol=1e-7)
    props = {p.key: p.value for p in model.metadata_props}
    assert report["metadata"] == ["qmap.normalization", "qmap.quant"]
    assert json.loads(props["qmap.normalization"]) == meta["normalization"]


@pytest.mark.parametrize("opset,low_bit,expected", [(21, True, "INT4"), (21, False, "INT8"), (13, True, "INT8")])
def test_weight_storage_type(images, tmp_path, opset, low_bit, expected):
    report, check = export_and_verify(quantized(images, w_bits=4, a_bits=4), images, tmp_path, opset=opset,
                                      low_bit_types=low_bit)
    assert {layer["weight"]["type"] for layer in report["layers"]} == {expected}
    assert {layer["input"]["type"] for layer in report["layers"][1:]} == {"UINT8"}  # post-ReLU: unsigned
    assert report["layers"][0]["input"]["type"] == "INT8"  # normalised image: signed
    model = onnx.load(tmp_path / "model.onnx")
    assert model.opset_import[0].version == opset
    per_byte = 2 if expected == "INT4" else 1  # packed raw storage, not one varint per value
    for t in (t for t in model.graph.initializer if t.name.endswith(".weight.codes")):
        assert len(t.raw_data) == -(-int(np.prod(t.dims)) // per_byte)
    assert check["max_rel_diff"] <= REL_TOL


@pytest.mark.parametrize("act,opset", [("gelu", 13), ("gelu", 21), ("hardswish", 21)])
def test_other_activations(images, tmp_path, act, opset):
    _, check = export_and_verify(quantized(images, act=act, w_bits=8, a_bits=8), images, tmp_path, opset=opset)
    assert check["max_rel_diff"] <= REL_TOL and check["top1_agreement"] == 1.0


class Residual(nn.Module):
    """conv → relu(y + conv(relu(y))) → global pool → linear; the pool is ``tensor.mean`` or a module."""

    def __init__(self, pool: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding="same"))
        self.pool = pool
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(y + self.body(y))
        y = self.pool(y) if self.pool is not None else y.mean((2, 3), keepdim=True)
        return self.head(torch.flatten(y, 1))


def test_unsupported_module_is_named(images, tmp_path):
    qmodel = quantized(images)
    qmodel.features[2] = nn.Softsign()
    with pytest.raises(ConfigError, match=r"features\.2 \(Softsign\)"):
        export_onnx(qmodel, tmp_path / "m.onnx", images[:2])
    assert not (tmp_path / "m.onnx").exists()


def test_mean_pool_is_a_global_average_pool(images, tmp_path):
    torch.manual_seed(0)
    model = Residual().eval()
    qmodel = quantize_model(model, QuantConfig(w_bits=8, a_bits=8, w_observer="minmax", a_observer="minmax"))
    calibrate(qmodel, images[:32])
    report, check = export_and_verify(qmodel, images, tmp_path)
    assert report["op_counts"]["GlobalAveragePool"] == 1
    assert check["max_rel_diff"] <= REL_TOL and check["top1_agreement"] == 1.0


def test_residual_add_and_same_padding(images, tmp_path):
    torch.manual_seed(0)
    model = Residual(pool=nn.AdaptiveAvgPool2d(1)).eval()
    qmodel = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, w_observer="minmax", a_observer="minmax"))
    calibrate(qmodel, images[:32])
    report, check = export_and_verify(qmodel, images, tmp_path)
    assert {layer["op"] for layer in report["layers"]} == {"ConvInteger", "MatMulInteger"}
    assert report["op_counts"]["Add"] == 1 + 3  # the residual, and one bias Add per layer
    assert check["max_abs_diff"] == 0.0


@pytest.mark.parametrize("name", ["tiny_cnn_gelu", "tiny_cnn_hswish"])
def test_omr_shift_form_exports(images, tmp_path, name):
    """OMR's shift form (the migrated copies as a module) exports as Gather/Sub/Relu/Concat."""
    from qmap.methods.omr import apply_omr
    from qmap.quant.shift import OutlierShift

    torch.manual_seed(1)
    qmodel = quantize_model(build_model(name, width=0.5).eval(), QuantConfig(
        w_bits=4, a_bits=3, first_last_bits=None, w_observer="minmax", a_observer="minmax"))
    calibrate(qmodel, images[:32])
    report = apply_omr(qmodel, selective=False, calib=images[:32])
    assert "shift" in {r["form"] for r in report["pairs"]}
    assert any(isinstance(m, OutlierShift) for m in qmodel.modules())
    rep, check = export_and_verify(qmodel, images[:64], tmp_path)
    assert rep["op_counts"]["Gather"] >= 1
    assert check["max_rel_diff"] <= REL_TOL and check["top1_agreement"] == 1.0


def test_uncalibrated_model_is_rejected(images, tmp_path):
    qmodel = quantize_model(build_model("tiny_cnn", width=0.5).eval(), QuantConfig())
    with pytest.raises(ConfigError, match="not calibrated"):
        export_onnx(qmodel, tmp_path / "m.onnx", images[:2])


def test_half_away_activation_rounding_is_rejected(images, tmp_path):
    with pytest.raises(ConfigError, match="half to even"):
        export_onnx(quantized(images, rounding="half_away"), tmp_path / "m.onnx", images[:2])


def test_non_rtn_quantizer_is_rejected(images, tmp_path):
    class SoftQuantizer(Quantizer):  # e.g. an unfinished AdaRound: output is not dequantize(to_int(x))
        def forward(self, x):
            return super().forward(x) + 0.3 * self._shaped(self.step, x)

    qmodel = quantized(images)
    wq = qmodel.features[3].weight_quantizer
    soft = SoftQuantizer(wq.spec, channels=wq.scale.numel(), name=wq.name)
    soft.load_state_dict(wq.state_dict())
    qmodel.features[3].weight_quantizer = soft
    with pytest.raises(ConfigError, match="features.3.weight.*not plain round-to-nearest"):
        export_onnx(qmodel, tmp_path / "m.onnx", images[:2])


@pytest.mark.slow
def test_reference_checkpoint_top1(reference_checkpoint, data_root, tmp_path):
    """Real VGG16-sq8 at W4A4 RTN on the 1017 genuine test images: ORT top-1 within 0.1 pp of fake-quant."""
    from qmap.data import calibration_set, load_cifar10, to_tensor
    from qmap.methods import get_method
    from qmap.models import load_model

    torch.set_num_threads(2)
    model, manifest = load_model(reference_checkpoint)
    mean, std = manifest.mean_std()
    calib = to_tensor(calibration_set(load_cifar10(data_root, "train_exact"), 256).images, mean, std)
    qmodel = get_method("rtn")(model.eval(), calib, QuantConfig(w_bits=4, a_bits=4)).model
    test = load_cifar10(data_root, "test_exact")
    x, y = to_tensor(test.images, mean, std), torch.as_tensor(test.labels)
    export_onnx(qmodel, tmp_path / "vgg.onnx", x[:2])
    for optimize in (False, True):  # the graph as written, and onnxruntime's default optimisations
        check = verify_onnx(tmp_path / "vgg.onnx", qmodel, x, y, threads=2, optimize=optimize)
        assert abs(check["top1_onnx"] - check["top1_torch"]) <= 0.001
        assert check["top1_agreement"] >= 0.999  # measured on 10k: benchmarks/results/onnx_export.md
        assert check["images_close"] >= 0.95
        assert check["top1_torch"] > 0.5  # sanity: a working W4A4 model
