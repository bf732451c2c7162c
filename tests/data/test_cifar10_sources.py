"""``load_cifar10``: source priority, the mirror put back into official order, the exact prefix, clear errors."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest
from datafakes import CLASSES, write_pickles
from PIL import Image

from qmap.data import cifar10, datasets, load_cifar10
from qmap.errors import DataError


def write_mirror(root, per_batch: int = 12, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A fake ``cifar10-jpeg-q75`` (PNG members, so pixels are exact) + order_index.csv + md5sums.
    Returns the official-order (images, labels) of each split."""
    rng = np.random.default_rng(seed)
    mirror = root / "cifar10-jpeg-q75"
    (mirror / "x").mkdir(parents=True)
    rows, official = ["batch,index,label,jpeg_path"], {}
    for split, batch_names in cifar10.SPLIT_BATCHES.items():
        count = dict.fromkeys(CLASSES, 0)
        images, labels = [], []
        for b in batch_names:
            for i in range(per_batch):
                label = int(rng.integers(10))
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                member = f"cifar10_jpeg/{split}/{CLASSES[label]}/{count[CLASSES[label]]:04d}.png"
                count[CLASSES[label]] += 1
                (mirror / "x" / member).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(mirror / "x" / member)
                rows.append(f"{b},{i},{label},{member}")
                images.append(img)
                labels.append(label)
        official[split] = (np.stack(images), np.array(labels))
    tar = mirror / "cifar10_jpeg_q75.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(mirror / "x" / "cifar10_jpeg", arcname="cifar10_jpeg")
    (mirror / "order_index.csv").write_text("\n".join(rows) + "\n")
    (mirror / "md5sums").write_text(f"{hashlib.md5(tar.read_bytes()).hexdigest()}  cifar10_jpeg_q75.tar\n")
    return official


@pytest.mark.parametrize("split", ["train", "test"])
def test_mirror_is_returned_in_official_order(tmp_path, split):
    official = write_mirror(tmp_path)
    ds = load_cifar10(tmp_path, split, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.images, official[split][0])
    np.testing.assert_array_equal(ds.labels, official[split][1])
    assert ds.classes == datasets.CLASSES and "official order" in ds.source


def test_mirror_md5_mismatch(tmp_path):
    write_mirror(tmp_path)
    (tmp_path / "cifar10-jpeg-q75/md5sums").write_text(f"{'0' * 32}  cifar10_jpeg_q75.tar\n")
    with pytest.raises(DataError, match="md5 mismatch for .*cifar10_jpeg_q75.tar"):
        load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_order_index_must_agree_with_the_class_folders(tmp_path):
    write_mirror(tmp_path)
    csv = tmp_path / "cifar10-jpeg-q75/order_index.csv"
    lines = csv.read_text().splitlines()
    b, i, label, path = lines[-1].split(",")
    lines[-1] = ",".join([b, i, str((int(label) + 1) % 10), path])
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="labels disagree"):
        load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_complete_pickles_win_over_the_mirror(tmp_path, monkeypatch):
    write_mirror(tmp_path)
    md5 = write_pickles(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "FILE_MD5", md5)
    assert "pickles" in load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache").source


def test_incomplete_pickles_fall_back_to_the_mirror(tmp_path):
    write_mirror(tmp_path)
    write_pickles(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py/test_batch").unlink()
    assert "official order" in load_cifar10(tmp_path, "test", cache_dir=tmp_path / "cache").source


def test_nothing_found_lists_where_it_looked(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py/batches.meta").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path, "test")
    msg = str(e.value)
    assert "\n" not in msg and "missing test_batch" in msg and "cifar10_jpeg_q75.tar (absent)" in msg
    assert "qmap data prepare --download" in msg


def test_exact_prefix_splits(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for b in [*cifar10.SPLIT_BATCHES["train"], "test_batch"]:
        arrays[f"{b}_labels"] = rng.integers(0, 10, 50).astype(np.uint8)
        arrays[f"{b}_data_prefix"] = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    path = tmp_path / datasets.EXACT_NPZ
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, **arrays)
    test = load_cifar10(tmp_path, "test_exact")
    assert len(test) == 7 and list(test.labels) == list(arrays["test_batch_labels"][:7])
    assert test.images[0, 0, 1, 2] == arrays["test_batch_data_prefix"][0, 2048 + 1]
    assert len(load_cifar10(tmp_path, "train_exact")) == 35
    (path.parent / "md5sums").write_text(f"{'1' * 32}  {path.name}\n")
    with pytest.raises(DataError, match="md5 mismatch"):
        load_cifar10(tmp_path, "test_exact")


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        load_cifar10(tmp_path, "validation")
