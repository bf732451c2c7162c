"""Untrusted CIFAR pickles: only builtins and plain numeric arrays come out; nothing else is imported or run."""

from __future__ import annotations

import io
import os
import pickle
import sys

import numpy as np
import pytest

from qmap.data.safe_pickle import restricted_loads
from qmap.errors import DataError


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('sys').modules.__setitem__('qmap_pwned', 1)",))


def test_array_and_builtins_round_trip():
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    obj = {"labels": [1, 2], "data": data, "name": "x", "nested": (1.5, [b"raw"])}
    out = restricted_loads(pickle.dumps(obj, protocol=4))
    assert out["labels"] == [1, 2] and out["name"] == "x" and out["nested"] == (1.5, [b"raw"])
    np.testing.assert_array_equal(out["data"], data)
    assert out["data"].flags.writeable


def test_python2_style_array_with_latin1_str_buffer():
    """Python-2 pickles store the array bytes as a str; read with encoding='latin1' they must come back exact."""
    data = np.arange(256, dtype=np.uint8).repeat(3).reshape(3, 256)

    class Py2Pickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, np.ndarray):
                reconstruct = o.__reduce_ex__(4)[0]  # numpy's own _reconstruct, as the pickle names it
                return reconstruct, (np.ndarray, (0,), "b"), (1, o.shape, o.dtype, False, o.tobytes().decode("latin1"))
            return NotImplemented

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({"data": data})
    np.testing.assert_array_equal(restricted_loads(buf.getvalue())["data"], data)


@pytest.mark.parametrize("payload", ["shell", "eval", "shell_inside_batch"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"shell": RunsShell(marker), "eval": CallsEval(),
            "shell_inside_batch": {"labels": [0], "data": np.zeros((1, 3072), np.uint8), "x": RunsShell(marker)}}
    blob = pickle.dumps(evil[payload], protocol=4)
    with pytest.raises(DataError, match=r"refused to unpickle: the file asks for '(posix|nt|builtins)\.(system|eval)'"):
        restricted_loads(blob, source="evil.pkl")
    assert not marker.exists()
    assert "qmap_pwned" not in sys.modules


@pytest.mark.parametrize("obj", [np.zeros(3, dtype=object), np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])])
def test_object_and_structured_arrays_are_refused(obj):
    with pytest.raises(DataError):
        restricted_loads(pickle.dumps({"data": obj}, protocol=4))


def test_truncated_pickle_gives_one_line_error():
    blob = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4}, protocol=4)
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        restricted_loads(blob[: len(blob) // 2], source="cut.pkl")
    assert "\n" not in str(e.value) and "cut.pkl" in str(e.value)
