"""A MobileNetV3-style CIFAR-10 net: inverted residual blocks (1x1 expand, depthwise 3x3, 1x1 project, each
with BatchNorm) with squeeze-excite and Hardswish in the later blocks, ReLU in the early ones (as V3).

Block: ``h = act(bn(expand(x)))``; ``h = act(bn(dw3x3(h)))``; with SE, ``h = h * hardsigmoid(fc2(relu(fc1(
avgpool(h)))))``; ``y = bn(project(h))``; ``y + x`` when the block keeps stride 1 and channel count.
Strides are chosen for 32x32 inputs (maps 32 -> 16 -> 8 -> 4); the head is a 1x1 conv + Hardswish, global
average pooling and one linear layer. About 9 M multiply-accumulates per image at width 1.
"""

from __future__ import annotations

import torch
from torch import nn

# (expanded channels, output channels, stride, squeeze-excite, activation) per block, at width 1.
BLOCKS: list[tuple[int, int, int, bool, str]] = [
    (32, 16, 1, True, "relu"),
    (64, 24, 2, False, "relu"),
    (72, 24, 1, False, "relu"),
    (96, 40, 2, True, "hardswish"),
    (120, 40, 1, True, "hardswish"),
    (120, 40, 1, True, "hardswish"),
    (240, 80, 2, True, "hardswish"),
    (320, 80, 1, True, "hardswish"),
]
STEM, HEAD = 16, 320
ACT = {"relu": nn.ReLU, "hardswish": nn.Hardswish}


class SqueezeExcite(nn.Module):
    """Channel gate ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1 convs as the two FC layers."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(ACT[act]())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, expanded: int, c_out: int, stride: int, se: bool, act: str):
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        self.expand = conv_bn_act(c_in, expanded, 1, act=act)
        self.depthwise = conv_bn_act(expanded, expanded, 3, stride, groups=expanded, act=act)
        self.se = SqueezeExcite(expanded) if se else nn.Identity()
        self.project = conv_bn_act(expanded, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.use_residual else y


class MobileNetCifar(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")

        def ch(c: int) -> int:
            return max(1, round(c * width))

        self.stem = conv_bn_act(3, ch(STEM), 3, act="hardswish")
        blocks, c_in = [], ch(STEM)
        for expanded, c_out, stride, se, act in BLOCKS:
            blocks.append(InvertedResidual(c_in, ch(expanded), ch(c_out), stride, se, act))
            c_in = ch(c_out)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(c_in, ch(HEAD), 1, act="hardswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch(HEAD), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(x.flatten(1))


def mobilenet_cifar(width: float = 1.0, num_classes: int = 10) -> MobileNetCifar:
    return MobileNetCifar(width, num_classes)
