"""The trained zoo checkpoints shipped in ``checkpoints/`` are intact, float16, load into their registry
model and carry a complete manifest (what they were trained on, how, and what they scored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qmap.models import load_model, read_state_dict
from qmap.models.checkpoint import sha256_file

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_cifar", "gelu_cnn"])
def test_shipped_checkpoint_loads_and_has_a_complete_manifest(name):
    path = CHECKPOINTS / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout (trained by 'qmap train', see checkpoints/README.md)")
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["sha256"] == sha256_file(path)
    assert manifest["arch"] == name and manifest["dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in read_state_dict(path).values() if v.is_floating_point())
    assert len(manifest["normalize_mean"]) == len(manifest["normalize_std"]) == 3
    assert 0.1 < manifest["test_top1"] <= 1 and 0.1 < manifest["test_exact_top1"] <= 1
    train = manifest["train"]
    assert train["command"].startswith(f"qmap train {name} ") and train["epochs"] == len(train["history"])
    assert train["data_checksum"] and manifest["test_data_checksum"] and train["wall_seconds_all_epochs"] > 0
    assert {"seed", "lr", "batch_size", "git_sha"} <= set(train)
    model, _ = load_model(path)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
