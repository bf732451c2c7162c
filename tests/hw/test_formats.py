import numpy as np
import pytest

from qmap.errors import HardwareError
from qmap.hw.formats import format_vectors, parse_vectors, read_vectors, write_vectors

HDR = ("name", "layout", "qmap_image=0")


def test_line_is_msb_first_with_last_value_first():
    text = format_vectors(np.array([[1, 2, 3]]), 4, False, HDR, "f.txt")
    assert text.splitlines()[3] == "0011" "0010" "0001"


def test_negative_values_are_twos_complement_never_signed():
    text = format_vectors(np.array([[-8, -1, 0, 7]]), 4, True, HDR, "w.txt")
    line = text.splitlines()[3]
    assert line == "0111" "0000" "1111" "1000"
    assert "-" not in text


@pytest.mark.parametrize("bits,signed", [(4, True), (4, False), (2, False), (16, True), (11, False)])
def test_roundtrip_full_range(tmp_path, rng, bits, signed):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    data = rng.integers(lo, hi + 1, (36, 8))
    data[0, :2] = lo, hi
    write_vectors(tmp_path / "a.txt", data, bits, signed, HDR)
    back = read_vectors(tmp_path / "a.txt", 8, bits, signed, n_lines=36)
    assert back.dtype == np.int64 and np.array_equal(back, data)


def test_out_of_range_value_names_file_and_line():
    data = np.zeros((5, 8), dtype=np.int64)
    data[2, 3] = 8
    with pytest.raises(HardwareError, match=r"w\.txt line 6: value 8 .* 4-bit signed"):
        format_vectors(data, 4, True, HDR, "w.txt")
    with pytest.raises(HardwareError, match=r"a\.txt line 4: value -1"):
        format_vectors(-np.ones((1, 8), dtype=np.int64), 4, False, HDR, "a.txt")


@pytest.mark.parametrize("text,match", [
    ("#a#\n#b#\n0000\n", "3 data|expected 1 data|header"),
    ("#a#\n#b c#\n#d#\n0000\n", "line 2: header"),
    ("#a#\n#b#\n#c#\n-001\n", "line 4: expected 4 characters"),
    ("#a#\n#b#\n#c#\n00000\n", "line 4"),
    ("#a#\n#b#\n#c#\n0000", "newline"),
    ("#a#\n#b#\n#c#\n0000\n\n", "expected 1 data lines"),
    (b"#a#\n#b#\n#c#\n00\xff0\n", "not ASCII"),
])
def test_malformed_text_is_rejected(text, match):
    with pytest.raises(HardwareError, match=match):
        parse_vectors(text, "f.txt", 1, 4, True, n_lines=1)


def test_header_token_must_be_one_word():
    with pytest.raises(HardwareError, match="one word"):
        format_vectors(np.zeros((1, 1)), 4, True, ("a b", "c", "d"), "f.txt")


def test_headerless_file_roundtrips_and_a_header_is_rejected():
    text = format_vectors(np.array([[5], [300]]), 11, False, (), "acc_address.txt")
    assert text == "00000000101\n00100101100\n"
    assert parse_vectors(text, "acc_address.txt", 1, 11, False, 2, headered=False).ravel().tolist() == [5, 300]
    with pytest.raises(HardwareError, match="line 1: expected 11 characters"):
        parse_vectors("#acc#\n" + text, "acc_address.txt", 1, 11, False, headered=False)
