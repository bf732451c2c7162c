"""Data root resolution, the calibration sampler, and tensor batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmap.data import ImageDataset, batches, calibration_indices, calibration_set, resolve_data_root, to_tensor
from qmap.errors import DataError


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No QMAP_DATA, an empty config home, and an empty working folder."""
    monkeypatch.delenv("QMAP_DATA", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def test_root_priority_arg_then_env_then_config(isolated, monkeypatch):
    for name in ("a", "e", "c"):
        (isolated / name).mkdir()
    (isolated / "cfg/qmap").mkdir(parents=True)
    (isolated / "cfg/qmap/config.yaml").write_text("data: ../../c\n")
    assert resolve_data_root() == (isolated / "c").resolve()  # relative to the config file's folder
    monkeypatch.setenv("QMAP_DATA", str(isolated / "e"))
    assert resolve_data_root() == (isolated / "e").resolve()
    assert resolve_data_root(isolated / "a") == (isolated / "a").resolve()


def test_no_root_lists_where_it_looked(isolated):
    with pytest.raises(DataError) as e:
        resolve_data_root()
    msg = str(e.value)
    assert "--data: not given" in msg and "$QMAP_DATA: not set" in msg and "qmap.yaml: absent" in msg


def test_wrong_root_names_its_origin(isolated, monkeypatch):
    monkeypatch.setenv("QMAP_DATA", str(isolated / "missing"))
    with pytest.raises(DataError, match=r"from \$QMAP_DATA"):
        resolve_data_root()


def make_dataset(labels) -> ImageDataset:
    n = len(labels)
    images = (np.arange(n * 12, dtype=np.int64) % 256).astype(np.uint8).reshape(n, 2, 2, 3)
    return ImageDataset(images, np.array(labels), tuple("abcd"), "synthetic")


def test_calibration_set_is_balanced_seeded_and_without_repeats():
    ds = make_dataset(np.repeat(np.arange(4), 50))
    calib = calibration_set(ds, n=42, seed=3)
    counts = calib.class_counts()
    assert len(calib) == 42 and counts.max() - counts.min() <= 1
    assert calib.checksum == calibration_set(ds, n=42, seed=3).checksum
    assert calib.checksum != calibration_set(ds, n=42, seed=4).checksum
    idx = calibration_indices(ds.labels, 4, n=42, seed=3)
    assert len(np.unique(idx)) == 42 and np.array_equal(calib.labels, ds.labels[idx])


def test_calibration_set_needs_enough_images_per_class():
    with pytest.raises(DataError, match="class 3 has 2 images"):
        calibration_set(make_dataset([0] * 10 + [1] * 10 + [2] * 10 + [3] * 2), n=12)


def test_to_tensor_normalises_per_channel():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 1] = 255
    x = to_tensor(img, mean=(0.0, 0.5, 0.25), std=(1.0, 0.5, 0.25))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([0.0, 1.0, -1.0]))


def test_batches_cover_every_image_once_and_shuffle_is_seeded():
    ds = make_dataset(np.arange(10) % 4)
    plain = list(batches(ds, 4, (0, 0, 0), (1, 1, 1)))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in plain]), torch.as_tensor(ds.labels))
    shuffled = [y for _, y in batches(ds, 4, (0, 0, 0), (1, 1, 1), shuffle=True, seed=1)]
    again = [y for _, y in batches(ds, 4, (0, 0, 0), (1, 1, 1), shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(shuffled, again))
    assert sorted(torch.cat(shuffled).tolist()) == sorted(ds.labels.tolist())


def test_head_takes_the_first_images_and_labels_the_source():
    ds = ImageDataset(np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3), np.arange(5) % 3,
                      ["a", "b", "c"], "src")
    h = ds.head(3)
    assert np.array_equal(h.images, ds.images[:3]) and np.array_equal(h.labels, ds.labels[:3])
    assert h.source == "src[:3]"
    assert len(ds.head(10)) == 5 and ds.head(10).source == "src[:10]"
