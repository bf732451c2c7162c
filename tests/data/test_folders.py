"""Image-folder trees and tars: decoding, ordering, caching, and clear errors for damaged input."""

from __future__ import annotations

import numpy as np
import pytest
from datafakes import tar_tree, write_tree
from PIL import Image

from qmap.data import folders, load_image_folder
from qmap.errors import DataError


def test_tree_and_tar_give_the_same_dataset(tmp_path):
    tree = write_tree(tmp_path / "tree", {"train": 3, "test": 2})
    a = load_image_folder(tree, "test", cache_dir=tmp_path / "c1")
    b = load_image_folder(tar_tree(tree, tmp_path / "t.tar"), "test", cache_dir=tmp_path / "c2")
    assert a.images.shape == (6, 32, 32, 3) and a.classes == ("airplane", "automobile", "bird")
    assert list(a.labels) == [0, 0, 1, 1, 2, 2]
    assert a.checksum == b.checksum
    np.testing.assert_array_equal(a.images[3], np.asarray(Image.open(tree / "test/automobile/0001.png")))


def test_classes_are_shared_between_splits(tmp_path):
    tree = write_tree(tmp_path / "tree", {"train": 1}, classes=["a", "b", "c"])
    write_tree(tree, {"test": 1}, classes=["c"])
    assert list(load_image_folder(tree, "test", cache_dir=tmp_path / "c").labels) == [2]


def test_second_load_reads_the_cache_and_a_changed_source_invalidates_it(tmp_path, monkeypatch):
    tar = tar_tree(write_tree(tmp_path / "tree", {"train": 2, "test": 1}), tmp_path / "t.tar")
    first = load_image_folder(tar, "test", cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2  # one pass cached both splits

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(folders, "decode_folder", no_decoding)
        assert load_image_folder(tar, "test", cache_dir=tmp_path / "c").checksum == first.checksum
        assert len(load_image_folder(tar, "train", cache_dir=tmp_path / "c")) == 6
    tar_tree(write_tree(tmp_path / "tree2", {"test": 1}, seed=1), tar)  # new content, new size/mtime
    assert load_image_folder(tar, "test", cache_dir=tmp_path / "c").checksum != first.checksum


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    tree = write_tree(tmp_path / "tree", {"test": 1})
    good = load_image_folder(tree, "test", cache_dir=tmp_path / "c")
    for entry in (tmp_path / "c").glob("*.npz"):
        entry.write_bytes(b"garbage")
    assert load_image_folder(tree, "test", cache_dir=tmp_path / "c").checksum == good.checksum


def test_wrong_image_size_names_the_file(tmp_path):
    tree = write_tree(tmp_path / "tree", {"test": 2})
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(tree / "test/bird/0001.png")
    with pytest.raises(DataError, match=r"test/bird/0001.png is 32x30 \(WxH\), expected 32x32"):
        folders.decode_folder(tree, size=(32, 32))


def test_corrupt_image_names_the_file(tmp_path):
    tree = write_tree(tmp_path / "tree", {"test": 1}, fmt="jpg")
    (tree / "test/airplane/0000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="cannot decode image .*airplane/0000.jpg"):
        folders.decode_folder(tree)


def test_truncated_tar_is_one_clear_line(tmp_path):
    tar = tar_tree(write_tree(tmp_path / "tree", {"test": 3}), tmp_path / "t.tar")
    blob = tar.read_bytes()
    tar.write_bytes(blob[: len(blob) // 2 + 100])
    with pytest.raises(DataError, match="truncated") as e:
        load_image_folder(tar, "test", cache_dir=tmp_path / "c")
    assert "\n" not in str(e.value)


def test_missing_split_and_missing_source(tmp_path):
    tree = write_tree(tmp_path / "tree", {"train": 1})
    with pytest.raises(DataError, match="no images under test/<class>/"):
        load_image_folder(tree, "test", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nope.tar", "test", cache_dir=tmp_path / "c")


def test_cache_never_goes_into_a_read_only_data_root(tmp_path, monkeypatch):
    from qmap.data.cache import default_cache_dir
    monkeypatch.delenv("QMAP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home_cache"))
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)  # as ../shared/data; root would pass os.access here
    try:
        assert default_cache_dir(tmp_path / "rw") == tmp_path / "rw/.qmap_cache"
        assert default_cache_dir(tmp_path / "ro") == tmp_path / "home_cache/qmap"
        assert not (tmp_path / "ro/.qmap_cache").exists()
        monkeypatch.setenv("QMAP_CACHE", str(tmp_path / "explicit"))
        assert default_cache_dir(tmp_path / "rw") == tmp_path / "explicit"
    finally:
        (tmp_path / "ro").chmod(0o755)
