"""Models by name. ``build_model(name, width=..)`` returns a freshly initialised FP32 model.

Every entry also declares the 8x8 hardware target layer (if any) and the input normalisation it expects.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from . import gelu_cnn, mobilenet, resnet, tiny, vgg

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, ModelEntry] = {
    "vgg16_bn": ModelEntry("vgg16_bn", vgg.vgg16_bn, "CIFAR-10 VGG16-BN (13 conv + 1 linear)"),
    "vgg16_bn_sq8": ModelEntry("vgg16_bn_sq8", vgg.vgg16_bn_sq8,
                               "VGG16-BN with the squeezed 256->8, 8->8, 8->512 block (8x8 array target)",
                               extra={"hw_target": "features.27"}),
    "tiny_cnn": ModelEntry("tiny_cnn", tiny.tiny_cnn, "small conv net for tests (ReLU)"),
    "tiny_cnn_gelu": ModelEntry("tiny_cnn_gelu", lambda **kw: tiny.tiny_cnn(act="gelu", **kw),
                                "small conv net with GELU (OMR non-ReLU tests)"),
    "tiny_cnn_hswish": ModelEntry("tiny_cnn_hswish", lambda **kw: tiny.tiny_cnn(act="hardswish", **kw),
                                  "small conv net with h-swish (OMR non-ReLU tests)"),
    "resnet20": ModelEntry("resnet20", resnet.resnet20,
                           "CIFAR ResNet-20 (3 stages x 3 basic blocks, 16/32/64 ch, 1x1 conv+BN downsampling "
                           "shortcuts)"),
    "mobilenet_cifar": ModelEntry("mobilenet_cifar", mobilenet.mobilenet_cifar,
                                  "MobileNetV3-style CIFAR net (inverted residuals, depthwise 3x3, Hardswish, "
                                  "squeeze-excite with Hardsigmoid gate)"),
    "gelu_cnn": ModelEntry("gelu_cnn", gelu_cnn.gelu_cnn,
                           "small CNN with GELU (3 stages x 2 conv 32/64/128 ch, max pools, 2 linear layers)"),
}


def model_names() -> list[str]:
    return sorted(REGISTRY)


def user_entry(spec: str) -> ModelEntry:
    """``package.module:factory`` — the user's own model: ``factory()`` (given ``width``/``num_classes`` only if it
    takes them) must return an ``nn.Module``; the module must be importable (installed or on PYTHONPATH).
    CIFAR-10 normalisation unless the checkpoint manifest states another."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {module_name} has no callable {attr!r}")
    takes = inspect.signature(factory).parameters

    def build(width: float = 1.0, num_classes: int = 10) -> nn.Module:
        try:
            model = factory(**{k: v for k, v in (("width", width), ("num_classes", num_classes)) if k in takes})
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything; one line names it
            raise ConfigError(f"model {spec!r}: the factory raised {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {spec!r}: the factory returned a {type(model).__name__}, not an nn.Module")
        return model

    return ModelEntry(spec, build, f"user model {spec}")


def get_entry(name: str) -> ModelEntry:
    """A registry entry, or for ``package.module:factory`` the user's model (:func:`user_entry`)."""
    if ":" in name:
        return user_entry(name)
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(model_names())} "
                          "(or your own as package.module:factory)")
    return REGISTRY[name]


def build_model(name: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """Build model ``name`` at ``width`` (channel multiplier; the squeezed 8-channel layers stay at 8)."""
    return get_entry(name).factory(width=width, num_classes=num_classes)
