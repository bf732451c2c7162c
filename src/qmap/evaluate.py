"""Top-1 evaluation of a classifier on an :class:`~qmap.data.ImageDataset`.

top-1 = (number of images whose arg-max logit equals the label) / N, returned as a fraction in [0, 1].
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from .data import ImageDataset, batches


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: ImageDataset, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 500, device: str | torch.device | None = None, progress: bool = True) -> dict:
    """Return ``{'top1', 'correct', 'n', 'seconds', 'images_per_s'}`` for ``model`` (put in eval mode) on
    ``dataset``. Throughput counts normalisation, transfer and forward passes, not data loading from disk."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    correct = 0
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), unit="img", desc="eval", disable=not progress, file=sys.stderr, leave=False)
    try:
        for x, y in batches(dataset, batch_size, mean, std, device=device):
            correct += int((model(x).argmax(dim=1) == y).sum())
            bar.update(len(y))
    finally:
        bar.close()
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = len(dataset)
    return {"top1": correct / n if n else float("nan"), "correct": correct, "n": n, "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else float("inf")}
