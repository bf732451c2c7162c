"""A small CIFAR-shaped conv net for unit tests: conv-bn-act x4 with two pools, then a linear layer."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}


class TinyCNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, act: str = "relu"):
        super().__init__()
        c1, c2 = max(1, int(16 * width)), max(1, int(32 * width))
        a = ACTIVATIONS[act]
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), a(),
            nn.Conv2d(c1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), a(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), a(),
            nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), a(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def tiny_cnn(width: float = 1.0, num_classes: int = 10, act: str = "relu") -> TinyCNN:
    return TinyCNN(width, num_classes, act)
