"""CIFAR ResNet-20 (He et al. 2016, section 4.2): a 3x3 stem, three stages of three basic blocks at
16 / 32 / 64 channels (32x32, 16x16, 8x8 maps), global average pooling and one linear layer.

Basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. Shortcuts are identities except where the
block downsamples (stride 2, channels doubled): there they are a 1x1 stride-2 conv + BatchNorm ("option B" of
the paper; option A's zero-padded identity has no weights to quantize and is not used here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, stages: tuple[int, ...], blocks: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stages[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        layers, c_in = [], stages[0]
        for i, c in enumerate(stages):
            layers.append(nn.Sequential(*[BasicBlock(c_in if b == 0 else c, c, 2 if (b == 0 and i > 0) else 1)
                                          for b in range(blocks)]))
            c_in = c
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.modules():  # zero-init each residual branch's last BN: blocks start as identities
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def resnet20(width: float = 1.0, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 with every stage's channel count multiplied by ``width`` (0.27 M parameters at width 1)."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return CifarResNet(tuple(max(1, round(c * width)) for c in STAGES), BLOCKS_PER_STAGE, num_classes)
