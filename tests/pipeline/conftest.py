"""A tiny, fully synthetic run set-up: an image-tree CIFAR-10 stand-in and a tiny_cnn checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from datafakes import CLASSES, write_tree  # noqa: E402
from testutil import randomise_bn  # noqa: E402

from qmap.models import Manifest, build_model, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory) -> tuple[Path, Path]:
    """(data root with a 10-class image tree, tiny_cnn checkpoint with manifest)."""
    root = tmp_path_factory.mktemp("tinydata")
    write_tree(root / "cifar10-jpeg-q75" / "cifar10_jpeg", {"train": 6, "test": 3}, classes=CLASSES)
    torch.manual_seed(0)
    model = randomise_bn(build_model("tiny_cnn"))  # non-trivial BN statistics, so fusion is exercised
    ckpt = root / "tiny.safetensors"
    save_checkpoint(model, ckpt, Manifest(arch="tiny_cnn"))
    return root, ckpt
