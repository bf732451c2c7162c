"""The CIFAR zoo models (ResNet-20, MobileNet-style, GELU CNN) have the structure their docstrings state."""

from __future__ import annotations

import torch
from torch import nn

from qmap.models import build_model


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_resnet20_has_19_convs_plus_two_shortcut_convs_and_the_published_size():
    model = build_model("resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19  # stem + 3 stages x 3 blocks x 2
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2  # option-B shortcuts at the two downsamplings
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6  # He et al.: 0.27 M


def test_resnet20_blocks_start_as_identities():
    """bn2 is zero-initialised, so a freshly built block computes relu(0 + x) on stride 1."""
    block = build_model("resnet20").layer1[0].eval()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_mobilenet_has_depthwise_convs_hardswish_and_squeeze_excite():
    model = build_model("mobilenet_cifar")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert _count(model, nn.Hardswish) > 0 and _count(model, nn.Hardsigmoid) > 0


def test_mobilenet_squeeze_excite_multiplies_by_a_hardsigmoid_gate():
    se = build_model("mobilenet_cifar").blocks[0].se.eval()
    x = torch.randn(2, se.fc2.out_channels, 4, 4)
    gate = nn.functional.hardsigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)


def test_gelu_cnn_uses_only_gelu_activations():
    model = build_model("gelu_cnn")
    assert _count(model, nn.GELU) == 6 and _count(model, nn.ReLU) == 0


def test_zoo_models_train_one_step():
    """Each builds at width 1, runs forward in train mode and gets a finite gradient on every parameter."""
    for name in ("resnet20", "mobilenet_cifar", "gelu_cnn"):
        model = build_model(name).train()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), name
