"""Conv-BN fusion: fused and unfused eval-mode outputs agree to 1e-5 relative (max |Δ| / max |y|)."""

from __future__ import annotations

import pytest
import torch
from testutil import randomise_bn
from torch import nn

from qmap.data import load_cifar10, to_tensor
from qmap.models import build_model, load_model, model_names
from qmap.nn.fuse import fuse_bn

TOLERANCE = 1e-5


def relative_error(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model.eval()(x)
        fused = fuse_bn(model)(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fuse_bn(model).modules())
    return float((fused - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", model_names())
def test_fusion_on_random_inputs(name):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = randomise_bn(build_model(name, width=0.5), gen)
    assert relative_error(model, torch.randn(8, 3, 32, 32, generator=gen)) < TOLERANCE


def test_fusion_check_can_fail():
    gen = torch.Generator().manual_seed(0)
    model = randomise_bn(build_model("tiny_cnn"), gen)
    broken = fuse_bn(model)
    broken.features[0].bias.data += 1e-3
    x = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert float((broken(x) - model.eval()(x)).abs().max() / model(x).abs().max()) > TOLERANCE


@pytest.fixture(scope="module")
def real_images(data_root) -> torch.Tensor:
    from qmap.models.registry import CIFAR10_MEAN, CIFAR10_STD
    return to_tensor(load_cifar10(data_root, "test_exact").images[:64], CIFAR10_MEAN, CIFAR10_STD)


@pytest.mark.slow
@pytest.mark.parametrize("name", model_names())
def test_fusion_on_real_images(name, real_images):
    torch.manual_seed(0)
    model = randomise_bn(build_model(name, width=0.5), torch.Generator().manual_seed(1))
    assert relative_error(model, real_images) < TOLERANCE


@pytest.mark.slow
def test_fusion_on_real_images_with_the_reference_checkpoint(data_root, reference_checkpoint):
    model, manifest = load_model(reference_checkpoint)
    images = load_cifar10(data_root, "test_exact").images[:256]
    assert relative_error(model, to_tensor(images, *manifest.mean_std())) < TOLERANCE
