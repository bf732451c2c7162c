"""The whole-network view chains the array's outputs only where the array computes the layer's output (a ReLU
folded into the requantization), and rebuilds the logits through whatever the host runs after the last array
layer (global average pooling, flatten, GELU tables) — the gaps that made a GELU CNN end in an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from qmap.errors import HardwareError
from qmap.hw.check import array_plan, network_view
from qmap.hw.spec import ArraySpec
from qmap.models import build_model, load_model
from qmap.quant import QuantConfig, calibrate, quantize_model, to_integer_model


class GapNet(nn.Module):
    """conv → ReLU → conv → ReLU → global average pool → flatten → linear (a ResNet-style head, one path)."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 12, 3, padding=1), act(),
                                  nn.Conv2d(12, 12, 3, padding=1), act())
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))


def _integer(model: nn.Module):
    q = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, first_last_bits=None, w_observer="mse",
                                          a_observer="mse"))
    calibrate(q, torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return to_integer_model(q)


def test_relu_net_with_global_average_pool_head_is_chained_to_the_logits():
    imodel = _integer(GapNet())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert array_plan(imodel, x)[0]  # chained: the array's outputs feed each other
    net = network_view(imodel, x, ArraySpec(psum_bits=32))
    assert net["summary"]["logits_match"] is True and net["summary"]["mismatches"] == 0


def test_gelu_layers_are_checked_one_by_one_not_chained():
    """The trained GELU CNN: its signed GELU codes are non-negative on some layers' inputs for this image, so those
    layers run on the array, but one by one (the array's ReLU would drop the negative accumulators the next
    GELU table needs); before, they were chained and the head skipped the global average pool."""
    path = Path(__file__).resolve().parents[2] / "checkpoints" / "gelu_cnn.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    model, _ = load_model(path)
    imodel = _integer(model)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    chained, chain, *_ = array_plan(imodel, x)
    assert not chained and chain
    net = network_view(imodel, x, ArraySpec(psum_bits=32))
    assert net["summary"]["mismatches"] == 0 and len(net["layers"]) == len(chain)
    with pytest.raises(HardwareError, match="no conv layer with unsigned inputs"):
        array_plan(_integer(GapNet(nn.GELU)), x)  # every GELU code signed here: nothing for the array


def test_vgg_head_flatten_keeps_the_chain():
    """The seed VGG's last conv ends in max-pool + flatten: still chained, logits rebuilt (regression)."""
    imodel = _integer(build_model("vgg16_bn_sq8", width=0.25).eval())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert array_plan(imodel, x)[0]
    assert network_view(imodel, x, ArraySpec(psum_bits=32))["summary"]["logits_match"] is True


def test_offset_input_is_the_signed_conv_plus_a_constant():
    """conv(pad(x + o, value=o), W) with padding 0 = conv(x, W, padding) + o·ΣW_o, at the borders too."""
    from qmap.hw.check import offset_input

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 8, (3, 7, 9), generator=gen)
    w = torch.randint(-7, 8, (5, 3, 3, 3), generator=gen)
    x_u, shift = offset_input(x.numpy(), w.numpy(), 4, padding=1)
    assert x_u.min() >= 0 and x_u.max() <= 15
    ref = torch.nn.functional.conv2d(x[None].double(), w.double(), padding=1)[0]
    got = torch.nn.functional.conv2d(torch.from_numpy(x_u)[None].double(), w.double())[0]
    assert torch.equal(got - torch.from_numpy(shift).double().reshape(-1, 1, 1), ref)


def _mid_conv_net(mid: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), mid,
                          nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.LazyLinear(5))
    model(torch.zeros(1, 3, 32, 32))  # sizes the head
    return model.eval()


@pytest.mark.parametrize("mid,chained", [
    (nn.Conv2d(8, 8, (1, 3)), True),  # any kh x kw kernel maps
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2), False),
    (nn.Conv2d(8, 8, 3, stride=(1, 2), padding=1), False),
    (nn.Conv2d(8, 8, 3, padding=(1, 0)), False),
])
def test_a_conv_the_mapping_cannot_take_stays_on_the_host_and_breaks_the_chain(mid, chained):
    """The mapping runs one stride and one padding for both axes with adjacent taps: a dilated conv or one with a
    per-axis stride / padding runs on the host, and the layers after it are checked on their own traced inputs
    (chaining across it would feed layer 4's array output to layer 6)."""
    from qmap.hw.mapping import geometry_issue

    assert (geometry_issue(mid.stride, mid.padding, mid.dilation) is None) == chained
    imodel = _integer(_mid_conv_net(mid))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    is_chained, chain, host, *_ = array_plan(imodel, x)
    assert is_chained == chained and ("4" in host) != chained
    net = network_view(imodel, x, ArraySpec(psum_bits=32))
    assert net["summary"]["mismatches"] == 0 and net["summary"]["logits_match"] is (True if chained else None)
