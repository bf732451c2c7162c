"""Every registry model builds at several widths and maps a CIFAR batch to 10 logits."""

from __future__ import annotations

import pytest
import torch

from qmap.errors import ConfigError
from qmap.models import build_model, get_entry, model_names


@pytest.mark.parametrize("name", model_names())
def test_builds_and_runs(name):
    for width in (0.25, 0.5):
        assert build_model(name, width=width).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sq8_hardware_layer_stays_8x8_at_every_width():
    for width in (0.25, 0.5, 1.0):
        model = build_model("vgg16_bn_sq8", width=width)
        layer = model.get_submodule(get_entry("vgg16_bn_sq8").extra["hw_target"])
        assert (layer.in_channels, layer.out_channels) == (8, 8)


def test_reference_width_has_the_documented_parameter_count():
    """models/SOURCE.txt: vgg16_bn_sq8 at width 0.5 has 2,237,514 parameters."""
    assert sum(p.numel() for p in build_model("vgg16_bn_sq8", width=0.5).parameters()) == 2_237_514


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="known models: .*vgg16_bn"):
        build_model("resnet9000")
