import numpy as np
import pytest

from qmap.errors import HardwareError
from qmap.hw.cycles import ws_cycles, ws_no_overlap_cycles
from qmap.hw.export import assemble_output
from qmap.hw.mapping import ConvGeometry, map_conv, reference_conv
from qmap.hw.spec import ArraySpec
from qmap.hw.systolic import simulate

CASES = [  # in, out, h, w, k, padding, stride, spec
    (8, 8, 4, 4, 3, 1, 1, ArraySpec()),
    (16, 16, 2, 2, 3, 1, 1, ArraySpec(psum_bits=20)),  # N = 4 < R: interval set by the weight writes
    (5, 11, 5, 3, 3, 1, 1, ArraySpec(rows=4, cols=3)),
    (20, 9, 6, 6, 3, 1, 2, ArraySpec(rows=8, cols=4, psum_bits=20)),
    (3, 4, 7, 5, 1, 0, 1, ArraySpec(rows=2, cols=5)),
    (6, 6, 3, 3, 5, 2, 1, ArraySpec(a_bits=2)),
]


@pytest.mark.parametrize("i,o,h,w,k,pad,stride,spec", CASES)
def test_engines_agree_bit_exact_with_plain_conv_and_closed_form(make_conv, i, o, h, w, k, pad, stride, spec):
    x, wt = make_conv(i, o, h, w, k, spec)
    bias = np.arange(o) * 7 - 20
    m = map_conv(x, wt, spec, pad, stride, bias)
    cyc, wav = simulate(m, "cycle"), simulate(m, "wavefront")
    assert np.array_equal(cyc.fold_psums, wav.fold_psums)
    assert np.array_equal(cyc.outputs, wav.outputs)
    assert np.array_equal(assemble_output(cyc.outputs, m.geom), np.maximum(reference_conv(x, wt, pad, stride, bias), 0))
    assert cyc.cycles == wav.cycles == ws_cycles(m.geom, spec)


def test_psums_match_the_exported_per_kij_files(make_conv):
    from qmap.hw.export import compute_vectors
    from qmap.hw.mapping import fold_input_indices

    x, w = make_conv(8, 8, 4, 4)
    m = map_conv(x, w, ArraySpec())
    vec = compute_vectors(m)
    sim = simulate(m, "cycle")
    idx = fold_input_indices(m.geom)
    for k in range(9):
        assert np.array_equal(sim.fold_psums[0, 0, k], vec.psums[0, 0, k][idx[k]])


def test_8x8_layer_cycle_figures():
    g, spec = ConvGeometry(8, 8, 4, 4), ArraySpec()
    rep = ws_cycles(g, spec)
    assert rep.total == 160 and rep.stream == 144 and rep.stall == 0 and rep.load + rep.stream + rep.drain == 160
    assert ws_no_overlap_cycles(g, spec) == 341
    assert rep.utilisation == pytest.approx(9216 / (64 * 160))


def test_psum_overflow_raises_instead_of_wrapping():
    x = np.full((8, 4, 4), 15)
    w = np.full((8, 8, 3, 3), 7)
    m = map_conv(x, w, ArraySpec(psum_bits=10))
    for engine in ("cycle", "wavefront"):  # 7·15·8·9 = 7560 needs 14 bits
        with pytest.raises(HardwareError, match=r"reach \[0, 7560\]: they need 14 bits, the array has psum_bits=10"):
            simulate(m, engine)
    res = simulate(map_conv(x, w, ArraySpec(psum_bits=16)))
    assert res.outputs.max() == 7560 and res.psum_bits_needed == 14


@pytest.mark.parametrize("i,o,h,w,spec", [
    (8, 8, 4, 4, ArraySpec(psum_bits=9, overflow="saturate")),
    (19, 10, 3, 5, ArraySpec(rows=4, cols=4, psum_bits=8, overflow="saturate")),
])
def test_saturating_engines_agree_and_clamp_every_sum(make_conv, i, o, h, w, spec):
    x, wt = make_conv(i, o, h, w, spec=spec)
    bias = np.arange(o) * 9 - 40
    m = map_conv(x, wt, spec, bias=bias)
    cyc, wav = simulate(m, "cycle"), simulate(m, "wavefront")
    assert np.array_equal(cyc.fold_psums, wav.fold_psums) and np.array_equal(cyc.outputs, wav.outputs)
    lo, hi = spec.psum_range
    assert cyc.fold_psums.min() >= lo and cyc.fold_psums.max() <= hi and cyc.outputs.max() <= hi
    assert cyc.psum_bits_needed > spec.psum_bits  # it did saturate
    exact = np.maximum(reference_conv(x, wt, bias=bias), 0)
    assert not np.array_equal(assemble_output(cyc.outputs, m.geom), exact)
