"""A restricted unpickler for the official CIFAR-10 python batches (untrusted input).

The batches are Python-2 pickles of a dict of builtins (str, int, list) plus one numpy array. Unpickling
normally imports whatever ``module.name`` the stream asks for and calls it — a hostile file can run any code.
Here ``find_class`` answers only the three globals a numpy array needs, and answers them with *inert
stand-ins* defined in this module (they record their arguments and never call numpy); every other global is
refused with :class:`DataError` before anything is imported or called. After loading, the stand-ins are
turned into real arrays with ``np.frombuffer`` on an allow-listed plain numeric dtype.

Pickle layout of an array (protocol 2): ``_reconstruct(ndarray, (0,), b'b')`` then BUILD with
``(version, shape, dtype, is_fortran, raw_bytes)``; the dtype is ``dtype(code, align, copy)`` then BUILD with
``(version, byteorder, ...)``.
"""

from __future__ import annotations

import io
import pickle
import re

import numpy as np

from ..errors import DataError

_DTYPE_CODE = re.compile(r"^[biuf][1248]$")  # bool/int/uint/float, 1..8 bytes: no object or structured dtypes


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` when passed as the first argument of ``_reconstruct``."""


class _DtypeRecord:
    def __init__(self, code, align=0, copy=1):
        self.code, self.byteorder = str(code), "|"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        if not _DTYPE_CODE.match(self.code):
            raise DataError(f"pickle holds an array of dtype {self.code!r}; only plain numeric arrays are accepted")
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _ArrayRecord:
    def __init__(self, cls=None, shape=None, typecode=None):
        if cls is not _NdarrayClass:
            raise DataError("pickle reconstructs an array subclass; refused")
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise DataError("malformed numpy array in pickle")
        _, shape, dtype, fortran, raw = self.state
        if not isinstance(dtype, _DtypeRecord) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise DataError("malformed numpy array in pickle")
        if isinstance(raw, str):  # a Python-2 str read with encoding='latin1' maps byte b to chr(b)
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes | bytearray):
            raise DataError("numpy array in pickle has no raw byte buffer")
        dt = dtype.to_numpy()
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * dt.itemsize:
            raise DataError(f"numpy array in pickle is truncated: {len(raw)} bytes for shape {tuple(shape)}")
        arr = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
        return np.array(arr)  # own, writable, C-contiguous copy


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _ArrayRecord,
    ("numpy._core.multiarray", "_reconstruct"): _ArrayRecord,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _DtypeRecord,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refused to unpickle: the file asks for '{module}.{name}', which a CIFAR batch never "
                            "needs (corrupt or malicious file)") from None

    def persistent_load(self, pid):
        raise DataError("refused to unpickle: persistent ids are not allowed")


def _materialise(obj):
    if isinstance(obj, _ArrayRecord):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {_materialise(k): _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    if isinstance(obj, _DtypeRecord | type):
        raise DataError("pickle holds a bare class or dtype object; refused")
    return obj


def restricted_loads(data: bytes, source: str = "pickle"):
    """Unpickle ``data`` allowing only builtin containers/scalars and plain numeric numpy arrays."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a truncated/garbled pickle raises many types (EOFError, UnpicklingError...)
        raise DataError(f"{source}: not a readable pickle (truncated or corrupt): {type(e).__name__}: {e}") from None
    try:
        return _materialise(obj)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    except RecursionError:  # a self-referencing or absurdly nested container: never a CIFAR batch
        raise DataError(f"{source}: refused to unpickle: containers nested too deeply or referencing "
                        f"themselves") from None
