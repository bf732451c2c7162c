"""``qmap eval``: human and JSON output, options, one-line errors; the reference checkpoint's accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qmap.cli import main
from qmap.data import load_cifar10
from qmap.evaluate import evaluate
from qmap.models import Manifest, build_model, load_model, save_checkpoint


@pytest.fixture
def tiny_setup(tmp_path):
    """A tiny_cnn checkpoint and a data root holding only a small fake exact-prefix file."""
    rng = np.random.default_rng(0)
    arrays = {}
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arrays[f"{b}_labels"] = rng.integers(0, 10, 40).astype(np.uint8)
        arrays[f"{b}_data_prefix"] = rng.integers(0, 256, (40, 3072), dtype=np.uint8)
    (tmp_path / "data/cifar10-exact-prefix").mkdir(parents=True)
    np.savez(tmp_path / "data/cifar10-exact-prefix/cifar10_exact_prefix.npz", **arrays)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("tiny_cnn"), ckpt, Manifest("tiny_cnn", normalize_mean=(0.5,) * 3,
                                                            normalize_std=(0.25,) * 3))
    return ckpt, tmp_path / "data"


def test_json_output_matches_the_api(tiny_setup, capsys):
    ckpt, data = tiny_setup
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "test_exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, manifest = load_model(ckpt)
    expected = evaluate(model, load_cifar10(data, "test_exact"), *manifest.mean_std(), progress=False)
    assert out["top1"] == expected["top1"] and out["n"] == 40 and out["arch"] == "tiny_cnn"


def test_limit_and_human_output(tiny_setup, capsys):
    ckpt, data = tiny_setup
    assert main(["eval", "tiny_cnn", "-c", str(ckpt), "--data", str(data), "--split", "test_exact",
                 "--limit", "7", "-q"]) == 0
    assert "tiny_cnn w1 on test_exact (7 images" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tiny_setup, capsys, tmp_path):
    ckpt, _ = tiny_setup
    assert main(["eval", "-c", str(ckpt), "--data", str(tmp_path / "empty"), "--json"]) == 3  # data error
    err = capsys.readouterr().err.strip()
    assert err.startswith("qmap eval: error: data root") and "\n" not in err
    assert main(["eval", "vgg16_bn", "-c", str(ckpt), "--data", str(tmp_path)]) == 4  # checkpoint error
    assert "was asked for" in capsys.readouterr().err


@pytest.mark.slow
def test_reference_checkpoint_on_the_genuine_1017_test_images(reference_checkpoint, data_root, capsys):
    """models/SOURCE.txt: 89.38 % on the first 1017 images of the genuine test_batch."""
    assert main(["eval", "--checkpoint", str(reference_checkpoint), "--data", str(data_root),
                 "--split", "test_exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 1017
    assert abs(100 * out["top1"] - 89.38) <= 0.1


@pytest.mark.slow
def test_reference_checkpoint_on_the_jpeg_mirror_test_split(reference_checkpoint, data_root, capsys):
    """models/SOURCE.txt: 87.83 % on the 10,000 JPEG-q75 test images (~20 s on 2 cores once decoded)."""
    assert main(["eval", "--checkpoint", str(reference_checkpoint), "--data", str(data_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 10000
    assert abs(100 * out["top1"] - 87.83) <= 0.1
