"""Batches of normalised float tensors from an :class:`ImageDataset` (plain tensor slicing, no torchvision).

Normalisation: ``x = (pixel / 255 − mean_c) / std_c`` per channel c, returned as float32 NCHW.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .imageset import ImageDataset


def to_tensor(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
              device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 NHWC images → normalised float32 NCHW tensor on ``device``."""
    x = torch.as_tensor(images).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s).contiguous()


def batches(dataset: ImageDataset, batch_size: int, mean: Sequence[float], std: Sequence[float],
            shuffle: bool = False, seed: int = 0, device: str | torch.device | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)``: normalised float32 NCHW images and int64 labels, ``batch_size`` at a time (last one
    may be smaller). ``shuffle`` permutes with a generator seeded by ``seed`` (same seed, same order)."""
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        imgs = dataset.images[idx] if shuffle else dataset.images[start:start + batch_size]
        yield to_tensor(imgs, mean, std, device), torch.as_tensor(dataset.labels[idx]).to(device)
