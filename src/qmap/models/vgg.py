"""CIFAR-10 VGG16 with BatchNorm, and its hardware variant with a squeezed 8-in/8-out conv.

Layout (matches the reference checkpoints): ``features`` is a Sequential of ``Conv2d(3x3, pad 1, bias=False)
+ BatchNorm2d + ReLU`` per number of the config and ``MaxPool2d(2)`` per ``"M"``; ``classifier`` is one
``Linear(last_channels, num_classes)`` on the flattened 1x1 feature map.
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                              512, 512, 512, "M"]
# After the third pool (4x4 maps) the first 512-block becomes conv 256->8, conv 8->8, conv 8->512.
VGG16_SQ8_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 8, 8, 512, "M",
                                  512, 512, 512, "M"]
SQUEEZED = 8  # channel counts that stay fixed at every width


def scale_cfg(cfg: list[int | str], width: float) -> list[int | str]:
    """Multiply every channel count by ``width`` except the squeezed 8-channel layers and pools."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [c if c == "M" or c == SQUEEZED else max(1, int(round(c * width))) for c in cfg]


class VGG(nn.Module):
    """VGG for 32x32 inputs: ``features`` (conv/bn/relu/pool) then a single linear classifier."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, int(c), 3, padding=1, bias=False), nn.BatchNorm2d(int(c)),
                           nn.ReLU(inplace=True)]
                c_in = int(c)
        self.cfg = list(cfg)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16_bn(width: float = 1.0, num_classes: int = 10) -> VGG:
    return VGG(scale_cfg(VGG16_CFG, width), num_classes)


def vgg16_bn_sq8(width: float = 1.0, num_classes: int = 10) -> VGG:
    return VGG(scale_cfg(VGG16_SQ8_CFG, width), num_classes)
