"""Training: the augmentation matches pad-crop-flip, a tiny run writes a complete checkpoint, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qmap.data import ImageDataset
from qmap.errors import ConfigError
from qmap.models import load_model, read_state_dict
from qmap.train import TrainConfig, random_crop_flip, state_path, train


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_random_crop_flip_equals_pad_then_crop_then_flip(mode):
    images = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    out = random_crop_flip(images, 3, mode, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # replay the same draws
    dy = torch.randint(-3, 4, (16, 1), generator=gen)
    dx = torch.randint(-3, 4, (16, 1), generator=gen)
    flip = torch.rand(16, 1, generator=gen) < 0.5
    torch_mode = "reflect" if mode == "reflect" else "constant"
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (3, 3, 3, 3), mode=torch_mode)
    for i in range(16):
        y0, x0 = 3 + int(dy[i]), 3 + int(dx[i])
        crop = padded[i, :, y0:y0 + 8, x0:x0 + 8]
        expected = crop.flip(-1) if flip[i] else crop
        assert torch.equal(out[i].permute(2, 0, 1).float(), expected), i


def toy_dataset(n: int, seed: int) -> ImageDataset:
    """Two classes told apart by brightness, so even one epoch learns something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 128, (n, 12, 12, 3)) + 100 * labels[:, None, None, None]
    return ImageDataset(images.astype(np.uint8), labels, ("dark", "bright"), f"toy{seed}")


CFG = TrainConfig(epochs=2, batch_size=16, lr=0.05, label_smoothing=0.1, seed=3)


def test_tiny_run_writes_checkpoint_and_manifest(tmp_path):
    train_set, test_set = toy_dataset(128, 0), toy_dataset(32, 1)
    out = tmp_path / "tiny.safetensors"
    result = train("tiny_cnn", 0.25, train_set, test_set, TrainConfig(epochs=1, batch_size=16, schedule="cosine"),
                   out, device="cpu", progress=False, save_dtype=torch.float16,
                   extra_tests={"flipped": toy_dataset(32, 2)}, manifest_extra={"command": "qmap train tiny_cnn"})
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["arch"] == "tiny_cnn" and manifest["width"] == 0.25 and manifest["num_classes"] == 2
    assert manifest["train"]["data_checksum"] == train_set.checksum and manifest["train"]["seed"] == 0
    assert manifest["train"]["git_sha"] and manifest["test_top1"] == result["test_top1"]
    assert manifest["train"]["command"] == "qmap train tiny_cnn" and manifest["train"]["wall_seconds_all_epochs"] > 0
    assert 0 <= manifest["flipped_top1"] <= 1 and manifest["flipped_data"] == "toy2"
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["loss"])
    assert manifest["dtype"] == "float16" and all(v.dtype == torch.float16 for v in read_state_dict(out).values()
                                                   if v.is_floating_point())
    model, _ = load_model(out)
    assert model(torch.zeros(1, 3, 12, 12)).shape == (1, 2)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    train_set, test_set = toy_dataset(64, 0), toy_dataset(16, 1)
    straight = tmp_path / "straight.safetensors"
    train("tiny_cnn", 0.25, train_set, test_set, CFG, straight, device="cpu", progress=False)

    def crash_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train("tiny_cnn", 0.25, train_set, test_set, CFG, resumed, device="cpu", progress=False,
              on_epoch_end=crash_after_first_epoch)
    assert state_path(resumed).is_file() and not resumed.exists()
    result = train("tiny_cnn", 0.25, train_set, test_set, CFG, resumed, resume=True, device="cpu", progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    a, b = read_state_dict(straight), read_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path):
    train_set, test_set = toy_dataset(32, 0), toy_dataset(16, 1)
    out = tmp_path / "t.safetensors"
    train("tiny_cnn", 0.25, train_set, test_set, TrainConfig(epochs=1, batch_size=16), out, device="cpu",
          progress=False)
    with pytest.raises(ConfigError, match=r"different settings \(lr\)"):
        train("tiny_cnn", 0.25, train_set, test_set, TrainConfig(epochs=1, batch_size=16, lr=0.2), out,
              resume=True, device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"different settings \(normalization\)"):  # --mean / --std
        train("tiny_cnn", 0.25, train_set, test_set, TrainConfig(epochs=1, batch_size=16), out, resume=True,
              device="cpu", progress=False, normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


@pytest.mark.parametrize("field, value, says", [
    ("lr", -1.0, "lr: -1.0 is out of range; allowed: > 0"), ("lr", 0.0, "allowed: > 0"),
    ("lr", float("nan"), "lr: nan"), ("lr", float("inf"), "lr: inf"),
    ("weight_decay", -1e-4, "weight_decay: .* allowed: >= 0"), ("warmup", 0.0, r"warmup: .* allowed: in \(0, 1\)"),
    ("warmup", 1.5, "warmup"), ("momentum", 1.0, r"momentum: .* in \[0, 1\)"),
    ("label_smoothing", 1.0, "label_smoothing"), ("pad", -1, "pad"), ("seed", -3, "seed"),
    ("epochs", 0, "epochs"), ("batch_size", 0, "batch_size"),
    ("schedule", "step", "schedule: 'step' is not allowed; choose one of onecycle, cosine"),
    ("pad_mode", "edge", "pad_mode"),
])
def test_out_of_range_training_settings_are_refused_before_any_work(field, value, says):
    """Each setting outside what SGD / the schedulers take is one ConfigError naming it (a negative --lr used to
    reach PyTorch's optimizer and end as an internal error)."""
    with pytest.raises(ConfigError, match=says):
        TrainConfig(**{field: value})


def test_a_diverging_run_stops_with_one_error_and_saves_no_nan_state(tmp_path):
    out = tmp_path / "diverged.safetensors"
    with pytest.raises(ConfigError, match=r"training diverged in epoch 1 .* lower --lr"):
        train("tiny_cnn", 0.25, toy_dataset(64, 0), toy_dataset(16, 1),
              TrainConfig(epochs=2, batch_size=16, lr=1e30, schedule="cosine"), out, device="cpu", progress=False)
    assert not out.exists() and not state_path(out).exists()
