"""OCS: splitting keeps the FP function (float32, atol 1e-5), halves the outliers it targets, then RTN runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qmap.errors import ConfigError
from qmap.methods import get_method
from qmap.methods.channels import find_pairs
from qmap.methods.ocs import ocs_split
from qmap.models import build_model
from qmap.nn import fuse_bn
from qmap.quant import QuantConfig, quant_layers

ATOL = 1e-5


def _images(n=16, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Net(nn.Module):
    """conv → relu → maxpool → conv → relu → maxpool → flatten → linear, with one planted weight outlier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(6 * 4 * 4, 5)
        with torch.no_grad():
            self.features[4].weight[2, 5, 1, 1] = 3.0

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.mark.parametrize("target", ["weight", "activation", "both"])
@pytest.mark.parametrize("name", ["net", "tiny_cnn", "tiny_cnn_gelu"])
def test_split_preserves_the_float_function(target, name):
    model = (Net() if name == "net" else build_model(name, width=0.5)).eval()
    x = _images()
    split, report = ocs_split(model, x, expand_ratio=0.2, target=target)
    gelu_activation = name == "tiny_cnn_gelu" and target == "activation"
    assert (report["extra_channels"] == 0) == gelu_activation  # GELU is not positively homogeneous: skipped
    assert (split(x) - model(x)).abs().max() <= ATOL
    if name == "tiny_cnn_gelu" and target != "weight":
        assert len(report["skipped"]) == 4


def test_weight_split_halves_the_largest_weight_and_counts_splits():
    model = Net().eval()
    split, report = ocs_split(model, expand_ratio=0.2, target="weight")
    conv = split.features[4]
    first = report["pairs"][0]
    assert (first["producer"], first["consumer"]) == ("features.0", "features.4")
    assert first["splits"][0] == 5 and len(first["splits"]) == math.ceil(0.2 * 8)
    assert torch.isclose(conv.weight.abs().max(), torch.tensor(1.5))
    assert conv.in_channels == 8 + len(first["splits"]) == split.features[0].out_channels


def test_activation_split_halves_the_largest_calibration_activation():
    model, x = Net().eval(), _images()
    fused = fuse_bn(model)
    before = {}
    fused.features[4].register_forward_pre_hook(lambda m, inp: before.setdefault("v", inp[0]))
    fused(x)
    split, report = ocs_split(model, x, expand_ratio=0.1, target="activation")
    after = {}
    split.features[4].register_forward_pre_hook(lambda m, inp: after.setdefault("v", inp[0]))
    split(x)
    c = report["pairs"][0]["splits"][0]
    assert c == int(before["v"].amax(dim=(0, 2, 3)).argmax())
    assert torch.allclose(after["v"][:, c], before["v"][:, c] / 2, atol=ATOL)
    assert torch.allclose(after["v"][:, -1], before["v"][:, c] / 2, atol=ATOL)


def test_apply_runs_rtn_on_the_split_model():
    x = _images()
    result = get_method("ocs")(Net(), x, QuantConfig(w_bits=4, a_bits=4), expand_ratio=0.1, target="both")
    layers = dict(quant_layers(result.model))
    assert layers["features.4"].in_channels > 8 and bool(layers["features.4"].input_quantizer.initialized)
    assert result.report["method"] == "ocs" and result.report["extra_channels"] > 0
    assert [p.consumer for p in find_pairs(result.model)[0]] == ["features.4", "classifier"]


def test_bad_options():
    with pytest.raises(ConfigError, match="target"):
        ocs_split(Net(), target="bias")
    with pytest.raises(ConfigError, match="calibration"):
        ocs_split(Net(), target="activation")
