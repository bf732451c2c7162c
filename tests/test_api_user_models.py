"""Hand-written user models (tests/user_models.py) through the Python API: every method, then the integer model,
the quantized-model file (saved and loaded through the user's own class) and the ONNX export of its result — the
path a new user takes."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from user_models import INPUT, USER_MODELS, build, images

import qmap
from qmap.errors import ConfigError
from qmap.export.quantized import load_quantized, save_quantized
from qmap.quant import to_integer_model

FAST = {"iters": 4, "batch_size": 8}
METHODS = {"rtn": {}, "alpha": {"points": 4, "refine": False, "search_images": 8}, "ocs": {"expand_ratio": 0.1},
           "adaround": FAST, "brecq": FAST, "qdrop": FAST, "domr": FAST, "domr-no-omr": {**FAST, "omr": False}}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_every_method_then_integer_model_and_onnx(name, method, tmp_path):
    model, calib = build(name), images(16)
    qmodel, report = qmap.quantize(model, calib, method=method.split("-")[0], w_bits=4, a_bits=4,
                                   progress=False, **METHODS[method])
    x = images(8, seed=7)
    with torch.no_grad():
        out = qmodel(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    imodel = to_integer_model(qmodel, input_shape=INPUT)
    assert float((imodel.run(x).logits.argmax(1) == out.argmax(1)).float().mean()) >= 0.75
    path = save_quantized(qmodel, tmp_path / "q.safetensors", factory=f"user_models:{name}", input_shape=INPUT)
    with torch.no_grad():  # the model's own block classes come back from model_fn, the rest from the file
        assert torch.equal(load_quantized(path, model_fn=USER_MODELS[name]).model(x), out)
    pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")
    from qmap.export import export_onnx, verify_onnx
    export_onnx(qmodel, tmp_path / "m.onnx", x[:2])  # OMR's shift form included
    check = verify_onnx(tmp_path / "m.onnx", qmodel, x, optimize=True)
    assert check["top1_agreement"] == 1.0 and check["max_rel_diff"] <= 5e-3


def _in_place(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "inplace", False)]


@pytest.mark.parametrize("method", ["rtn", "brecq", "ocs"])
@pytest.mark.parametrize("name", sorted(n for n in USER_MODELS if _in_place(build(n))))
def test_in_place_activations_change_nothing(name, method):
    """A model with ReLU(inplace=True) / Hardswish(inplace=True) quantizes exactly as the same model without them:
    no observer sample, cached input or checked output of qmap's is overwritten by the forward's in-place ops
    (the MSE observer kept views that torchvision MobileNetV3's in-place Hardswish then changed)."""
    calib, x, outs = images(16), images(8, seed=7), []
    for in_place in (True, False):
        model = build(name)
        for m in _in_place(model):
            m.inplace = in_place
        qmodel, _ = qmap.quantize(model, calib, method=method, w_bits=4, a_bits=4, progress=False, **METHODS[method])
        with torch.no_grad():
            outs.append(qmodel(x))
    assert torch.equal(*outs)


def test_calibration_as_dataloader_or_iterable_and_unknown_options():
    model, calib = build("view_fc"), images(16)
    ref, _ = qmap.quantize(model, calib, progress=False)
    loader = DataLoader(TensorDataset(calib, torch.zeros(16, dtype=torch.long)), batch_size=5)
    x = images(4, seed=3)
    dataset = TensorDataset(calib, torch.zeros(16, dtype=torch.long))  # single (image, label) items
    for source in (loader, [calib[:7], calib[7:]], (b for b in calib.split(4)), calib.numpy(), dataset,
                   [calib[:5].numpy(), calib[5:].numpy()]):
        q, _ = qmap.quantize(model, source, progress=False)
        assert torch.equal(q(x), ref(x))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for method 'rtn': iters; known: .*batch_size"):
        qmap.quantize(model, calib, iters=3)
    with pytest.raises(ConfigError, match="calibration data must be"):
        qmap.quantize(model, 3)
    with pytest.raises(ConfigError, match=r"float image tensors .* got a torch.uint8 tensor"):
        qmap.quantize(model, (calib * 40).clamp(0, 255).to(torch.uint8))
    with pytest.raises(ConfigError, match=r"a batch is a tensor or an \(images, labels\) tuple\), got a dict"):
        qmap.quantize(model, [{"image": calib}])
    with pytest.raises(ConfigError, match="holds no batches"):
        qmap.quantize(model, [])
    q64, _ = qmap.quantize(model, calib.double(), progress=False)  # numpy's float64: the model's float32
    assert torch.equal(q64(x), ref(x))
    with pytest.raises(ConfigError, match=r"must be a batch \[N, C, H, W\], got shape \(3, 16, 16\)"):
        qmap.quantize(model, calib[0])
    with pytest.raises(ConfigError, match=r"quant.w_bits: expected an integer \(2..8\), got str '4'"):
        qmap.quantize(model, calib, w_bits="4")
    with pytest.raises(ConfigError, match="model must be a torch nn.Module"):
        qmap.quantize("vgg", calib)


@pytest.mark.parametrize("method, options, says", [
    ("rtn", {"w_p_norm": float("nan")}, "quant.w_p_norm: expected a number"),
    ("rtn", {"skip": "features.0"}, "quant.skip: expected a list"),
    ("rtn", {"w_symmetric": "yes"}, "quant.w_symmetric: expected true or false"),
    ("rtn", {"qconfig": 5}, "qconfig must be a qmap.QuantConfig"),
    ("alpha", {"points": 1}, "method.options.points: 1 is out of range"),
    ("domr", {"omr_options": "x"}, "method.options.omr_options: expected a mapping"),
    ("brecq", {"lr_rounding": -1e-3}, "lr_rounding: -0.001 is out of range"),
    ("qdrop", {"iters": 2.5}, "method.options.iters: expected an integer"),
])
def test_api_options_get_the_run_configs_checks(method, options, says):
    """Keyword options are checked as a run config's quant / method.options sections are (types, ranges), before
    any work: one ConfigError, not a TypeError deep inside a method or a silently odd run."""
    with pytest.raises(ConfigError, match=re.escape(says)):
        qmap.quantize(build("view_fc"), images(4), method=method, progress=False, **options)


@pytest.mark.parametrize("method", ["rtn", "brecq"])
def test_a_quantized_model_answers_the_same_with_or_without_no_grad(method, tmp_path):
    """The model qmap.quantize returns and the one a file loads are inference models (no parameter requires a
    gradient): the same output with or without torch.no_grad, and a reload equal to the original either way.
    (A reconstructed model's layers took the exact integer path and a reloaded one the float path under autograd,
    so the two differed by round-off unless the user remembered no_grad.) A one-channel, non-square model."""
    from user_models import GRAY_INPUT, GrayLeNet

    torch.manual_seed(0)
    model = GrayLeNet().eval()
    gen = torch.Generator().manual_seed(2)
    calib, x = torch.randn(16, *GRAY_INPUT, generator=gen), torch.randn(6, *GRAY_INPUT, generator=gen)
    qmodel, _ = qmap.quantize(model, calib, method=method, w_bits=4, a_bits=4, progress=False,
                              **({} if method == "rtn" else FAST))
    assert not any(p.requires_grad for p in qmodel.parameters()) and not qmodel.training
    assert any(p.requires_grad for p in model.parameters())  # the user's own model is not frozen
    out = qmodel(x)
    with torch.no_grad():
        assert torch.equal(qmodel(x), out)
    path = save_quantized(qmodel, tmp_path / "g.safetensors", factory="user_models:GrayLeNet", input_shape=GRAY_INPUT)
    assert torch.equal(load_quantized(path, model_fn=GrayLeNet).model(x), out)
    imodel = to_integer_model(qmodel, input_shape=GRAY_INPUT)
    assert torch.equal(imodel.run(x).logits.argmax(1), out.argmax(1))


def test_a_float64_user_model_stays_float64(tmp_path):
    """A double-precision user model: the integer model traces it with a float64 example, and the quantized-model
    file reloads its tensors in their saved float types (they were cast to float32 on load before)."""
    model = build("residual").double()
    gen = torch.Generator().manual_seed(3)
    calib, x = (torch.randn(n, *INPUT, generator=gen, dtype=torch.float64) for n in (16, 6))
    qmodel, _ = qmap.quantize(model, calib, w_bits=4, a_bits=4, progress=False)
    out = qmodel(x)
    assert out.dtype == torch.float64
    assert torch.equal(to_integer_model(qmodel, input_shape=INPUT).run(x).logits.argmax(1), out.argmax(1))
    path = save_quantized(qmodel, tmp_path / "d.safetensors", factory="user_models:Residual", input_shape=INPUT)
    assert torch.equal(load_quantized(path, model_fn=lambda: build("residual").double()).model(x), out)


def test_user_factory_by_name_and_plain_state_dict(tmp_path):
    from qmap.models import build_model
    from qmap.models.checkpoint import load_model
    model = build("residual")
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    loaded, manifest = load_model(tmp_path / "mine.pt", arch="user_models:Residual")
    x = images(2)
    assert manifest.arch == "user_models:Residual" and torch.equal(loaded(x), model(x))
    assert isinstance(build_model("user_models:Depthwise"), torch.nn.Module)
    with pytest.raises(ConfigError, match="has no callable 'Nope'"):
        build_model("user_models:Nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.mod'"):
        build_model("no_such_pkg.mod:f")


def test_calibration_images_the_model_cannot_take_are_one_clear_error(capfd):
    """Checked on one image before any work: a wrong channel count, and a non-square map under
    ``F.avg_pool2d(x, x.size()[3])`` (its rewrite to a global pool holds only on square maps); no traceback."""
    with pytest.raises(ConfigError, match=r"cannot run on an input of shape \(1, 4, 16, 16\): RuntimeError"):
        qmap.quantize(build("residual"), torch.randn(4, 4, 16, 16), progress=False)
    with pytest.raises(ConfigError, match="only on square maps"):
        qmap.quantize(build("option_a_resnet"), torch.randn(4, 3, 16, 24), progress=False)
    assert "Traceback" not in capfd.readouterr().err


def test_the_api_namespace_resolves_lazily_to_the_real_functions():
    from qmap.api import quantize
    from qmap.export.onnx import export_onnx
    from qmap.export.quantized import save_quantized
    from qmap.quant import QuantConfig, to_integer_model

    assert (qmap.quantize, qmap.save_quantized, qmap.load_quantized, qmap.to_integer_model, qmap.export_onnx,
            qmap.QuantConfig) == (quantize, save_quantized, load_quantized, to_integer_model, export_onnx, QuantConfig)
    assert set(qmap.__all__) <= set(dir(qmap))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        qmap.nope  # noqa: B018


def test_the_other_api_functions_refuse_bad_arguments_in_one_line(tmp_path):
    """to_integer_model / save_quantized / export_onnx / verify_onnx: a wrong type, shape or file is one
    QmapError naming it (the file functions write nothing), not a TypeError or onnxruntime exception."""
    pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")
    model, calib = build("view_fc"), images(8)
    qmodel, _ = qmap.quantize(model, calib, progress=False)
    out = tmp_path / "m.safetensors"
    cases = [
        (lambda: qmap.to_integer_model("vgg"), "qmodel must be a torch nn.Module"),
        (lambda: qmap.to_integer_model(qmodel, input_shape="3,16,16"), "input_shape must be (C, H, W)"),
        (lambda: qmap.save_quantized(model, out), "the model has no quantized layer"),
        (lambda: qmap.save_quantized(qmodel, out, input_shape=(3,)), "model.input_shape"),
        (lambda: qmap.save_quantized(qmodel, out, mean="abc"), "mean: expected a list of a number"),
        (lambda: qmap.save_quantized(qmodel, out, mean=(0.5,) * 3, std=(0.0, 1, 1)), "std > 0"),
        (lambda: qmap.export_onnx(qmodel, tmp_path / "m.onnx", torch.randn(2, 4, 16, 16)), "cannot run on an input"),
        (lambda: qmap.export_onnx(qmodel, tmp_path / "m.onnx", calib[:2].long()), "must be a float tensor"),
        (lambda: qmap.verify_onnx(tmp_path / "none.onnx", qmodel, calib), "cannot load ONNX file"),
    ]
    for call, says in cases:
        with pytest.raises(qmap.errors.QmapError, match=re.escape(says)):
            call()
    assert list(tmp_path.iterdir()) == []
    qmap.export_onnx(qmodel, tmp_path / "m.onnx", calib[:2])
    with pytest.raises(ConfigError, match=r"cannot run on inputs of shape \(8, 3, 8, 8\)"):
        qmap.verify_onnx(tmp_path / "m.onnx", qmodel, torch.randn(8, 3, 8, 8))
