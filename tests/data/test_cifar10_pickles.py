"""Official-format CIFAR-10 pickles: decoding, md5 checks, truncation, download with atomic placement."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
from datafakes import CLASSES, write_pickles

from qmap.data import cifar10, load_cifar10
from qmap.errors import DataError


def test_pickles_decode_to_nhwc_in_official_order(fake_pickles):
    folder, md5 = fake_pickles
    ds = cifar10.load_pickles(folder, "train", md5)
    assert ds.images.shape == (100, 32, 32, 3) and ds.classes == tuple(CLASSES)
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    # row layout: 1024 R, then 1024 G, then 1024 B, each 32 rows of 32
    assert ds.images[0, 2, 5, 1] == first["data"][0][1024 + 2 * 32 + 5]
    assert list(ds.labels[:20]) == first["labels"]


def test_md5_mismatch_is_one_clear_line(fake_pickles):
    folder, md5 = fake_pickles
    md5 = md5 | {"test_batch": "0" * 32}
    with pytest.raises(DataError, match=r"md5 mismatch for .*test_batch .*corrupt or truncated") as e:
        cifar10.load_pickles(folder, "test", md5)
    assert "\n" not in str(e.value)


def test_truncated_batch_is_refused_even_without_md5(fake_pickles):
    folder, _ = fake_pickles
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) - 500])
    with pytest.raises(DataError, match="truncated"):
        cifar10.load_pickles(folder, "test", md5={})


def test_wrong_image_size_in_batch_is_refused(tmp_path):
    folder = tmp_path / "b"
    write_pickles(folder)
    bad = {"labels": [0, 1], "data": np.zeros((2, 3 * 28 * 28), np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        cifar10.load_pickles(folder, "test", md5={})


def test_the_real_md5_table_rejects_fake_files(fake_pickles):
    folder, _ = fake_pickles
    with pytest.raises(DataError, match="md5 mismatch"):
        load_cifar10(folder.parent, "test")


def _archive(src_folder) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src_folder, arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_download_checks_md5_and_places_files(tmp_path):
    md5 = write_pickles(tmp_path / "src" / "cifar-10-batches-py")
    blob = _archive(tmp_path / "src" / "cifar-10-batches-py")
    (tmp_path / "served.tar.gz").write_bytes(blob)
    root = tmp_path / "root"
    (root / "cifar-10-batches-py").mkdir(parents=True)  # an incomplete folder, as in the shared data
    url = (tmp_path / "served.tar.gz").as_uri()
    with pytest.raises(DataError, match="has md5"):
        cifar10.download(root, url=url, archive_md5="f" * 32, md5=md5)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temp folder left behind
    folder = cifar10.download(root, url=url, archive_md5=hashlib.md5(blob).hexdigest(), md5=md5)
    assert sorted(p.name for p in folder.iterdir()) == sorted(md5)
    assert len(cifar10.load_pickles(folder, "test", md5)) == 20


def test_download_offline_says_so(tmp_path):
    with pytest.raises(DataError, match="offline"):
        cifar10.download(tmp_path, url=(tmp_path / "nothing.tar.gz").as_uri())
