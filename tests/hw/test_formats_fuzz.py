"""Any byte string either parses into in-range integers or raises HardwareError — nothing else."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qmap.errors import HardwareError
from qmap.hw.formats import format_vectors, parse_vectors

ALPHABET = st.sampled_from([b"0", b"1", b"#", b"\n", b"-", b" ", b"\r", b"2", b"\xff", b"a"])


def _parse_or_error(raw: bytes, n_values: int, bits: int, signed: bool):
    try:
        out = parse_vectors(raw, "fuzz.txt", n_values, bits, signed)
    except HardwareError:
        return None
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    assert out.dtype == np.int64 and out.shape[1] == n_values
    assert out.size == 0 or (out.min() >= lo and out.max() <= hi)
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 4), st.sampled_from([2, 4, 16]), st.booleans())
def test_random_bytes_parse_or_raise(raw, n_values, bits, signed):
    _parse_or_error(raw, n_values, bits, signed)


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=80).map(b"".join), st.booleans())
def test_format_like_bytes_parse_or_raise(body, signed):
    _parse_or_error(b"#h#\n#l#\n#i#\n" + body, 2, 4, signed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-8, 7), min_size=3, max_size=3), min_size=1, max_size=6),
       st.integers(0, 10_000), st.sampled_from([b"0", b"1", b"x", b"\n", b""]))
def test_mutated_valid_file_never_gives_a_silent_wrong_value(rows, pos, patch):
    data = np.array(rows)
    raw = format_vectors(data, 4, True, ("h", "l", "i"), "f.txt").encode()
    header_len = raw.index(b"#i#\n") + 4
    pos = header_len + pos % (len(raw) - header_len)  # mutate the data region
    mutated = raw[:pos] + patch + raw[pos + 1:]
    out = _parse_or_error(mutated, 3, 4, True)
    if out is not None and mutated.count(b"\n") == raw.count(b"\n") and len(mutated) == len(raw):
        # Same layout: only a flipped data bit may survive, which must show up as a changed value.
        assert np.array_equal(out, data) == (mutated == raw)
