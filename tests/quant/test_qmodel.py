"""quantize_model / calibrate on every registry model and on a residual model; config handling and errors."""

from __future__ import annotations

import pytest
import torch
from qhelpers import calibrated, images, small_model, tiny_resnet
from torch import nn

from qmap.errors import ConfigError
from qmap.models import build_model
from qmap.models.registry import model_names
from qmap.quant import QuantConfig, QuantConv2d, QuantLinear, float_mode, quant_layers, quantize_model, set_quant_state

MINMAX = {"w_observer": "minmax", "a_observer": "minmax"}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _check_quantized(model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> None:
    n_float = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    layers = quant_layers(qmodel)
    assert len(layers) == n_float
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in qmodel.modules())
    assert all(isinstance(m, QuantConv2d | QuantLinear) for _, m in layers)
    # Disabling fake-quant gives back the BN-fused FP function.
    set_quant_state(qmodel, False, False)
    with torch.no_grad():
        assert torch.allclose(qmodel(x), model(x), rtol=1e-4, atol=1e-4)
    set_quant_state(qmodel, True, True)


@pytest.mark.parametrize("name", model_names())
def test_every_registry_model(name):
    width = 0.0625 if name.startswith("vgg") else 0.5
    model = small_model(name, width=width)
    x = images(8)
    qmodel = calibrated(model, QuantConfig(w_bits=4, a_bits=4, **MINMAX), x)
    _check_quantized(model, qmodel, x)
    layers = quant_layers(qmodel)
    first, last = layers[0][1], layers[-1][1]
    assert first.weight_quantizer.spec.bits == 8 and last.input_quantizer.spec.bits == 8  # first/last 8-bit
    assert all(m.weight_quantizer.spec.bits == 4 for _, m in layers[1:-1])
    assert first.input_quantizer.spec.signed  # the normalised image has negative values
    with torch.no_grad():
        out = qmodel(x)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_w8a8_is_close_to_fp(observer):
    model = small_model("vgg16_bn_sq8", width=0.0625)
    x = images(16)
    qmodel = calibrated(model, QuantConfig(w_bits=8, a_bits=8, w_observer=observer, a_observer=observer), x)
    with torch.no_grad():
        assert _relative_error(qmodel(x), model(x)) < 0.05
        w4 = calibrated(model, QuantConfig(w_bits=4, a_bits=4, first_last_bits=None, **MINMAX), x)
        assert _relative_error(w4(x), model(x)) > _relative_error(qmodel(x), model(x))


def test_residual_model_fuses_and_quantizes():
    model = tiny_resnet()
    x = images(8)
    qmodel = calibrated(model, QuantConfig(w_bits=8, a_bits=8, **MINMAX), x)
    _check_quantized(model, qmodel, x)
    assert len(quant_layers(qmodel)) == 7  # stem, 2 + 2 block convs, 1 shortcut conv, fc
    with torch.no_grad():
        assert _relative_error(qmodel(x), model(x)) < 0.05
    # The block's second conv sees a ReLU output (unsigned), the stem the image (signed).
    names = dict(quant_layers(qmodel))
    assert not names["block1.conv2"].input_quantizer.spec.signed and names["stem"].input_quantizer.spec.signed


def test_skip_and_layer_bits():
    model = small_model("tiny_cnn")
    cfg = QuantConfig(w_bits=4, a_bits=4, skip=["features.3"], layer_bits={"features.7": (2, 3)}, **MINMAX)
    qmodel = calibrated(model, cfg, images(8))
    names = dict(quant_layers(qmodel))
    assert "features.3" not in names and isinstance(qmodel.features[3], nn.Conv2d)
    assert names["features.7"].weight_quantizer.spec.bits == 2 and names["features.7"].input_quantizer.spec.bits == 3
    cfg_all = QuantConfig(w_bits=4, a_bits=4, first_last_bits=None, **MINMAX)
    assert all(m.weight_quantizer.spec.bits == 4 for _, m in quant_layers(quantize_model(model, cfg_all)))


@pytest.mark.parametrize("kwargs, match", [({"skip": ["nope"]}, "unknown layer"),
                                           ({"layer_bits": {"features.99": (4, 4)}}, "unknown layer")])
def test_unknown_layer_names(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        quantize_model(small_model("tiny_cnn"), QuantConfig(**kwargs))


@pytest.mark.parametrize("kwargs", [{"w_bits": 1}, {"a_bits": 9}, {"w_bits": 16}, {"first_last_bits": 10},
                                    {"layer_bits": {"features.0": (4, 12)}}])
def test_bit_widths_outside_2_8(kwargs):
    with pytest.raises(ConfigError, match="bit width") as e:
        quantize_model(small_model("tiny_cnn"), QuantConfig(**kwargs))
    assert "\n" not in str(e.value)


def test_config_from_dict():
    cfg = QuantConfig.from_dict({"w_bits": 3, "layer_bits": {"features.0": [8, 8]}})
    assert cfg.layer_bits == {"features.0": (8, 8)} and QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown quantization option"):
        QuantConfig.from_dict({"wbits": 3})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_weights(bad):
    model = small_model("tiny_cnn")
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = bad
    with pytest.raises(ConfigError, match="NaN/Inf") as e:
        quantize_model(model, QuantConfig(**MINMAX))
    assert "\n" not in str(e.value)


def test_all_zero_layer():
    model = small_model("tiny_cnn")
    with torch.no_grad():
        model.features[3].weight.zero_()
    qmodel = calibrated(model, QuantConfig(w_bits=4, a_bits=4), images(8))
    with torch.no_grad():
        assert bool(torch.isfinite(qmodel(images(4))).all())


def test_model_without_layers():
    with pytest.raises(ConfigError, match="no Conv2d/Linear"):
        quantize_model(nn.Sequential(nn.ReLU()), QuantConfig())


def test_float_mode_restores_each_quantizers_own_flag():
    """A layer whose input quantizer is off but whose output quantizer (before a GELU) is on keeps both."""
    q = quantize_model(build_model("tiny_cnn_gelu", width=0.5), QuantConfig(w_bits=4, a_bits=4))
    first = quant_layers(q)[0][1]
    assert first.output_quantizer is not None
    first.input_quantizer.enabled = False
    with float_mode(q):
        assert not any(x.enabled for _, m in quant_layers(q) for x in (m.weight_quantizer, *m.activation_quantizers()))
    assert not first.input_quantizer.enabled and first.output_quantizer.enabled and first.weight_quantizer.enabled
