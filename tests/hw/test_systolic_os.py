import numpy as np
import pytest

from qmap.errors import HardwareError
from qmap.hw.export import assemble_output
from qmap.hw.mapping import ConvGeometry, map_conv, reference_conv
from qmap.hw.network import IntConvLayer, run_network
from qmap.hw.spec import ArraySpec
from qmap.hw.systolic_os import os_cycles, simulate_os

OS = ArraySpec(dataflow="os")
CASES = [  # in, out, h, w, k, padding, stride, spec
    (8, 8, 4, 4, 3, 1, 1, OS),  # the 8x8 layer: N = 16 = 2 position tiles
    (16, 16, 2, 2, 3, 1, 1, ArraySpec(psum_bits=20, dataflow="os")),  # N = 4 < R: half the rows idle
    (5, 11, 5, 3, 3, 1, 1, ArraySpec(rows=4, cols=3, dataflow="os")),  # partial position and channel tiles
    (20, 9, 6, 6, 3, 1, 2, ArraySpec(rows=8, cols=4, psum_bits=20, dataflow="os")),  # stride 2
    (3, 4, 7, 5, 1, 0, 1, ArraySpec(rows=2, cols=5, dataflow="os")),  # 1x1 kernel
    (6, 6, 3, 3, 5, 2, 1, ArraySpec(a_bits=2, dataflow="os")),  # 5x5 kernel
]


@pytest.mark.parametrize("i,o,h,w,k,pad,stride,spec", CASES)
def test_engines_agree_bit_exact_with_plain_conv_and_closed_form(make_conv, i, o, h, w, k, pad, stride, spec):
    x, wt = make_conv(i, o, h, w, k, spec)
    bias = np.arange(o) * 7 - 20
    m = map_conv(x, wt, spec, pad, stride, bias)
    cyc, vec = simulate_os(m, "cycle"), simulate_os(m, "vectorised")
    assert np.array_equal(cyc.fold_psums, vec.fold_psums)
    assert np.array_equal(cyc.outputs, vec.outputs)
    assert np.array_equal(assemble_output(cyc.fold_psums, m.geom), reference_conv(x, wt, pad, stride))
    assert np.array_equal(assemble_output(cyc.outputs, m.geom), np.maximum(reference_conv(x, wt, pad, stride, bias), 0))
    assert cyc.cycles == vec.cycles == os_cycles(m.geom, spec)


def test_closed_form_matches_the_cycle_engine_on_random_shapes(rng):
    for _ in range(8):
        rows, cols = (int(v) for v in rng.integers(1, 7, 2))
        k = int(rng.choice([1, 3]))
        pad, stride = (0 if k == 1 else 1), int(rng.integers(1, 3))
        g = ConvGeometry(int(rng.integers(1, 6)), int(rng.integers(1, 10)), int(rng.integers(2, 7)),
                         int(rng.integers(2, 7)), k, k, pad, stride)
        spec = ArraySpec(rows=rows, cols=cols, psum_bits=24, dataflow="os")
        x = rng.integers(0, 16, (g.in_channels, g.height, g.width))
        w = rng.integers(-8, 8, (g.out_channels, g.in_channels, k, k))
        res = simulate_os(map_conv(x, w, spec, pad, stride), "cycle")
        rep = os_cycles(g, spec)
        assert res.cycles == rep, (g, spec)
        assert rep.load + rep.stream + rep.stall + rep.drain == rep.total
        assert np.array_equal(assemble_output(res.outputs, g), np.maximum(reference_conv(x, w, pad, stride), 0))


def test_8x8_layer_cycle_figures():
    rep = os_cycles(ConvGeometry(8, 8, 4, 4), OS)
    # 2 tiles x (K = 72 issue + 14 skew fill + 8 drain)
    assert (rep.total, rep.stream, rep.stall, rep.drain) == (188, 144, 28, 16)
    assert rep.utilisation == pytest.approx(9216 / (64 * 188))


def test_psum_overflow_raises_instead_of_wrapping():
    x = np.full((8, 4, 4), 15)
    w = np.full((8, 8, 3, 3), 7)
    m = map_conv(x, w, ArraySpec(psum_bits=10, dataflow="os"))
    for engine in ("cycle", "vectorised"):
        with pytest.raises(HardwareError, match="need 14 bits, the array has psum_bits=10"):
            simulate_os(m, engine)
    full = 7 * 15 * 8 * 9
    assert simulate_os(map_conv(x, w, ArraySpec(psum_bits=16, dataflow="os"))).outputs.max() == full
    tight = ArraySpec(psum_bits=15, dataflow="os")  # the sum fits 15 bits, the sum + bias does not
    m = map_conv(x, w, tight, bias=np.full(8, 2 ** 14 - full))
    for engine in ("cycle", "vectorised"):
        with pytest.raises(HardwareError, match="need 16 bits, the array has psum_bits=15"):
            simulate_os(m, engine)


def test_unknown_engine_is_rejected(make_conv):
    x, w = make_conv(2, 2, 3, 3)
    with pytest.raises(HardwareError, match="unknown engine"):
        simulate_os(map_conv(x, w, OS), "wavefront")


def test_run_network_dispatches_on_dataflow(make_conv):
    x, w = make_conv(5, 6, 4, 4)
    expected = np.maximum(reference_conv(x, w), 0)
    layer = IntConvLayer("l0", x, w, expected_out=expected)
    spec = ArraySpec(rows=4, cols=4, dataflow="os")
    for engine in ("cycle", "wavefront"):
        rep = run_network([layer], spec, engine=engine)
        assert rep.mismatches == 0
        assert rep.total_cycles == os_cycles(ConvGeometry(5, 6, 4, 4), spec).total
    ws = run_network([layer], ArraySpec(rows=4, cols=4))
    assert ws.mismatches == 0 and ws.total_cycles != rep.total_cycles
