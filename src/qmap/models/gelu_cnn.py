"""A small plain CNN with GELU activations for CIFAR-10: three stages of two 3x3 conv + BatchNorm + GELU
(32 / 64 / 128 channels at width 1), each stage ended by 2x2 max pooling, then global average pooling,
one hidden linear layer with GELU and the classifier. About 38 M multiply-accumulates per image at width 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES = (32, 64, 128)
HIDDEN = 128


class GeluCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        stages, c_in = [], 3
        for c in STAGES:
            c = max(1, round(c * width))
            stages.append(nn.Sequential(
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.GELU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.GELU(),
                nn.MaxPool2d(2)))
            c_in = c
        self.stages = nn.Sequential(*stages)
        hidden = max(1, round(HIDDEN * width))
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.stages(x), 1), 1)
        return self.fc2(F.gelu(self.fc1(x)))


def gelu_cnn(width: float = 1.0, num_classes: int = 10) -> GeluCNN:
    return GeluCNN(width, num_classes)
