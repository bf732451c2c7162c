"""Checkpoints: round trip, and refusals that name what is wrong (keys, shapes, NaN/Inf, manifest, pickles)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from qmap.errors import CheckpointError
from qmap.models import Manifest, build_model, load_model, read_state_dict, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(model, path, Manifest(arch="tiny_cnn", width=1.0))
    return model, path


def rewrite(path, state):
    """Replace the tensors and record the new file's sha256 in the manifest (so the content checks run)."""
    from safetensors.torch import save_file

    from qmap.models.checkpoint import manifest_path, sha256_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    man = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps(man | {"sha256": sha256_file(path)}))


def test_replaced_tensors_without_a_new_sha256_are_refused(saved):
    from safetensors.torch import save_file
    _, path = saved
    state = read_state_dict(path)
    state["classifier.bias"] += 1
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="does not match its manifest: sha256"):
        load_model(path)


def test_negative_bn_variance_is_refused(saved):
    _, path = saved
    state = read_state_dict(path)
    state["features.1.running_var"][0] = -0.5
    rewrite(path, state)
    with pytest.raises(CheckpointError, match=r"running_var must be >= 0.*features\.1\.running_var"):
        load_model(path)


def test_round_trip_reproduces_outputs(saved):
    model, path = saved
    loaded, manifest = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    assert manifest.arch == "tiny_cnn" and torch.equal(model.eval()(x), loaded(x))


def test_missing_and_unexpected_keys_are_named(saved):
    _, path = saved
    state = read_state_dict(path)
    state["extra.weight"] = state.pop("classifier.bias")
    rewrite(path, state)
    with pytest.raises(CheckpointError, match=r"missing keys: classifier\.bias; unexpected keys: extra\.weight"):
        load_model(path)


def test_shape_mismatch_is_named(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*features\.0\.weight: checkpoint \(16, 3, 3, 3\)"):
        load_model(path, width=0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(saved, bad):
    _, path = saved
    state = read_state_dict(path)
    state["features.3.weight"][0, 0, 0, 0] = bad
    rewrite(path, state)
    with pytest.raises(CheckpointError, match=r"NaN/Inf values in: features\.3\.weight"):
        load_model(path)


def test_manifest_problems(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="'tiny_cnn' .* but 'vgg16_bn' was asked for"):
        load_model(path, arch="vgg16_bn")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="no manifest"):
        load_model(path)
    assert load_model(path, arch="tiny_cnn")[1].arch == "tiny_cnn"


def test_corrupt_safetensors(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        load_model(path)
    man = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in man.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_model(path)


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": RunsShell(marker)}, path)
    (tmp_path / "evil.json").write_text(json.dumps({"arch": "tiny_cnn"}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(path)
    assert not marker.exists()
