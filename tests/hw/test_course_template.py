"""Read an exported folder the way the course template's testbench (core_tb.v) does, and fail where it would.

The template skips three header tokens of activation/weight/out files with ``$fscanf(fd, "%s", ...)``, reads
each data line with ``$fscanf(fd, "%<width>b", ...)`` (activations and weights: row·bw bits, outputs:
col·psum_bw bits) and reads ``acc_address.txt`` with ``$fscanf(fd, "%11b", A_pmem)`` from its first line,
len_kij addresses per output position; its SFU sums the psum memory at those addresses and compares the ReLU
with the out file line. ``$fscanf`` semantics modelled here: both conversions skip leading whitespace; ``%s``
takes the next whitespace-delimited token; ``%<w>b`` takes up to w binary digits and matches nothing (returns
0) on any other character, or -1 at the end of the file. A read that does not return 1 is a failure.
"""

import numpy as np
import pytest

from qmap.hw.export import address_bits, export_conv, read_export
from qmap.hw.spec import ArraySpec


class Fscanf:
    """The subset of Verilog ``$fscanf`` that the template uses, over one file's text."""

    def __init__(self, path):
        self.text, self.pos, self.name = path.read_text(), 0, path.name

    def _skip_blanks(self):
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def token(self) -> str:
        self._skip_blanks()
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1
        if start == self.pos:
            raise AssertionError(f"{self.name}: $fscanf(\"%s\") hit the end of the file")
        return self.text[start:self.pos]

    def binary(self, width: int) -> int:
        self._skip_blanks()
        start = self.pos
        while self.pos < len(self.text) and self.pos - start < width and self.text[self.pos] in "01":
            self.pos += 1
        if start == self.pos:
            at = "the end of the file" if start == len(self.text) else repr(self.text[start:start + 12])
            raise AssertionError(f"{self.name}: $fscanf(\"%{width}b\") matched nothing at {at}")
        return int(self.text[start:self.pos], 2)


def lanes(word: int, n: int, bits: int, signed: bool) -> list[int]:
    """Lane i = bits [i·bits, (i+1)·bits) of a line read as one number (lane n-1 = the line's first bits)."""
    vals = [(word >> (i * bits)) & ((1 << bits) - 1) for i in range(n)]
    return [v - (1 << bits) if signed and v >> (bits - 1) else v for v in vals]


def read_like_template(folder, spec: ArraySpec, n_padded: int, n_positions: int, n_kij: int, addr_width: int):
    """Every file of a single-tile export, read the template's way: (activations [nij][r], weights [k][c][r],
    psums [k][nij][c], outputs [p][c], addresses [p·K + k])."""
    R, C, P = spec.rows, spec.cols, spec.psum_bits

    def headered(name, n_lines, width):
        f = Fscanf(folder / name)
        for _ in range(3):
            f.token()
        return [f.binary(width) for _ in range(n_lines)]

    act = [lanes(v, R, spec.a_bits, False) for v in headered("activation_tile0.txt", n_padded, R * spec.a_bits)]
    w = [[lanes(v, R, spec.w_bits, True) for v in headered(f"weight_itile0_otile0_kij{k}.txt", C, R * spec.w_bits)]
         for k in range(n_kij)]
    psum = [[lanes(v, C, P, True) for v in headered(f"psum_kij{k}.txt", n_padded, C * P)] for k in range(n_kij)]
    out = [lanes(v, C, P, True) for v in headered("out.txt", n_positions, C * P)]
    f = Fscanf(folder / "acc_address.txt")
    addr = [f.binary(addr_width) for _ in range(n_positions * n_kij)]
    return act, w, psum, out, addr


def template_sfu(psum, addr, n_padded: int, n_positions: int, n_kij: int) -> list[list[int]]:
    """The template's accumulation: output p = ReLU(Σ_j psum memory[addr[p·K + j]]), memory = kij·n_padded + nij."""
    flat = [row for k in range(n_kij) for row in psum[k]]
    outs = []
    for p in range(n_positions):
        acc = np.sum([flat[a] for a in addr[p * n_kij:(p + 1) * n_kij]], axis=0)
        outs.append(np.maximum(acc, 0).tolist())
    return outs


@pytest.fixture
def course_folder(tmp_path, make_conv):
    x, w = make_conv(8, 8, 4, 4)
    export_conv(x, w, ArraySpec(), tmp_path, meta={"image_index": 3})
    return tmp_path


def _read(folder, vec):
    g = vec.mapped.geom
    return read_like_template(folder, vec.mapped.spec, g.n_padded, g.n_positions, g.n_kij, address_bits(g))


def test_template_reads_every_file_and_its_sfu_reproduces_out(course_folder):
    vec = read_export(course_folder)
    act, w, psum, out, addr = _read(course_folder, vec)
    g = vec.mapped.geom
    assert len(addr) == 144 and len((course_folder / "acc_address.txt").read_text().splitlines()) == 144
    assert np.array_equal(np.array(act).T, vec.mapped.x_tiles[0])
    assert np.array_equal(np.array(w), vec.mapped.w_tiles[0, 0])
    assert np.array_equal(np.array(psum), vec.psums[0, 0])
    assert np.array_equal(np.array(out), vec.outputs[0])
    assert np.array_equal(addr, vec.acc_address)
    assert template_sfu(psum, addr, g.n_padded, g.n_positions, g.n_kij) == out


@pytest.mark.parametrize("name,edit", [
    ("acc_address.txt", lambda lines: ["#acc_address#", *lines]),        # a one-line header
    ("acc_address.txt", lambda lines: lines[:-1]),                        # a missing address
    ("out.txt", lambda lines: lines[1:]),                                 # one header line short
    ("weight_itile0_otile0_kij5.txt", lambda lines: lines[:-1]),          # a missing weight row
    ("activation_tile0.txt", lambda lines: [lines[0], *lines[3:]]),       # a one-line header
    ("psum_kij2.txt", lambda lines: lines[:-1]),                          # a missing psum line
])
def test_template_reading_fails_on_a_format_slip(course_folder, name, edit):
    vec = read_export(course_folder)
    _read(course_folder, vec)
    path = course_folder / name
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(AssertionError, match="matched nothing"):
        _read(course_folder, vec)
