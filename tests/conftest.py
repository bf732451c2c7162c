"""Shared fixtures. Real-data tests take ``data_root`` (or ``reference_checkpoint``) and are marked ``slow``;
without ``QMAP_DATA`` they skip and say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder from ``QMAP_DATA`` (CI: ``../shared/data``); skips the test when unavailable."""
    env = os.environ.get("QMAP_DATA")
    if not env:
        pytest.skip("QMAP_DATA not set: real-data test")
    root = Path(env)
    if not root.is_dir():
        pytest.skip(f"dataset not found at {root} (QMAP_DATA): real-data test")
    return root


@pytest.fixture(scope="session")
def reference_checkpoint(data_root: Path) -> Path:
    """The reference vgg16_bn_sq8 w0.5 checkpoint (see ``models/SOURCE.txt`` in the data folder)."""
    path = data_root / REFERENCE_CHECKPOINT
    if not path.is_file():
        pytest.skip(f"reference checkpoint not found at {path}: real-data test")
    return path
