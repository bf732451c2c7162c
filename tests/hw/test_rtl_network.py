"""One build of the Verilog core runs layers of any shape in either dataflow (runtime configuration from
qmap_layer.txt), with bias and saturating arithmetic, equal to the golden model value for value and cycle for
cycle; a whole tiny network runs through it with the host requantizing in between, and its logits equal the
integer model's."""

import shutil

import numpy as np
import pytest
import torch
from testutil import randomise_bn

from qmap.hw.check import network_view
from qmap.hw.mapping import map_conv
from qmap.hw.network import IntConvLayer, layer_tiling
from qmap.hw.rtl_network import RtlLayerRunner
from qmap.hw.spec import ArraySpec
from qmap.hw.systolic import simulate
from qmap.hw.systolic_os import simulate_os
from qmap.models import build_model
from qmap.quant import QuantConfig, calibrate, quantize_model, to_integer_model

pytestmark = [pytest.mark.rtl,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed (apt iverilog)")]

@pytest.fixture(autouse=True)
def own_build_cache(tmp_path, monkeypatch):
    """Each test builds into its own cache folder (the default is ~/.cache/qmap/rtl)."""
    monkeypatch.setenv("QMAP_CACHE", str(tmp_path / "cache"))


SHAPES = [  # in, out, h, w, k, padding, stride
    (8, 8, 4, 4, 3, 1, 1),
    (12, 10, 5, 3, 3, 1, 2),
    (3, 16, 6, 6, 1, 0, 1),
    (16, 4, 2, 2, 3, 1, 1),
]


def test_one_build_runs_every_shape_equal_to_golden(tmp_path, make_conv, rng):
    spec = ArraySpec(psum_bits=12)
    layers = []
    for i, o, h, w, k, pad, stride in SHAPES:
        x, wt = make_conv(i, o, h, w, k)
        layers.append(IntConvLayer(f"l{len(layers)}", x, wt, rng.integers(-300, 300, o), pad, stride))
    runner = RtlLayerRunner(spec, [layer_tiling(layer, spec) for layer in layers], tmp_path, "icarus")
    for layer in layers:
        m = map_conv(layer.x_int, layer.w_int, spec, layer.padding, layer.stride, layer.bias_int)
        golden = simulate(m)
        out, res = runner(m, layer.name)
        assert np.array_equal(out, golden.outputs) and res["cycles"] == golden.cycles.total, layer.name
    # saturating arithmetic is runtime configuration of the same build: 15·7·8·9 = 7560 clamps at 2047
    x, w = np.full((8, 4, 4), 15), np.where(rng.random((8, 8, 3, 3)) < 0.8, 7, -8)
    m = map_conv(x, w, ArraySpec(psum_bits=12, overflow="saturate"), bias=np.arange(8) * 100 - 400)
    golden = simulate(m)
    assert golden.psum_bits_needed > 12 and golden.outputs.max() == 2047
    out, res = runner(m, "saturating")
    assert np.array_equal(out, golden.outputs) and res["cycles"] == golden.cycles.total
    m = map_conv(x, w, ArraySpec(psum_bits=12, overflow="saturate", dataflow="os"), bias=np.arange(8) * 100 - 400)
    golden = simulate_os(m)
    assert golden.psum_bits_needed > 12 and golden.outputs.max() == 2047
    out, res = runner(m, "saturating_os")
    assert np.array_equal(out, golden.outputs) and res["cycles"] == golden.cycles.total
    again = RtlLayerRunner(spec, [layer_tiling(layer, spec) for layer in layers], tmp_path, "icarus")
    assert not runner.build_reused and again.build_reused and again.cmd == runner.cmd  # built once, then cached


def test_whole_tiny_network_on_the_rtl_gives_the_integer_logits(tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(build_model("tiny_cnn", width=0.5))
    qmodel = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, first_last_bits=None, w_observer="minmax",
                                                a_observer="minmax"))
    calibrate(qmodel, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    imodel = to_integer_model(qmodel)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    net = network_view(imodel, x, ArraySpec(), rtl_work_dir=tmp_path, rtl_simulator="icarus")
    sm = net["summary"]
    assert sm["rtl_layers"] == len(net["layers"]) >= 2 and sm["rtl_builds"] == 1
    assert sm["logits_match"] is True and sm["rtl_mismatches"] == 0 and sm["mismatches"] == 0
    assert all(row["rtl_cycles"] == row["cycles"] for row in net["layers"]) and sm["rtl_cycles_equal_golden"]
    assert all(row["psum_bits_needed"] <= row["psum_bits"] for row in net["layers"])


def _random_shapes(rng, n):
    """``n`` random small layers: channels 1..20, maps 1..7, kernels 1/3/5 with a padding keeping ≥ 1 output,
    strides 1..2."""
    shapes = []
    while len(shapes) < n:
        k = int(rng.choice([1, 3, 5]))
        pad, stride = int(rng.integers(0, k // 2 + 1)), int(rng.integers(1, 3))
        h, w = (int(v) for v in rng.integers(1, 8, 2))
        if h + 2 * pad >= k and w + 2 * pad >= k:
            shapes.append((int(rng.integers(1, 21)), int(rng.integers(1, 21)), h, w, k, pad, stride))
    return shapes


def test_ws_and_os_on_one_build_equal_golden_on_22_random_layers(tmp_path, make_conv, rng):
    spec = ArraySpec(rows=4, cols=4, psum_bits=14)
    layers = []
    for i, o, h, w, k, pad, stride in _random_shapes(rng, 22):
        x, wt = make_conv(i, o, h, w, k, spec)
        layers.append(IntConvLayer(f"r{len(layers)}", x, wt, rng.integers(-50, 50, o), pad, stride))
    runner = RtlLayerRunner(spec, [layer_tiling(layer, spec) for layer in layers], tmp_path, "icarus")
    for layer in layers:
        for dataflow, golden_model in (("ws", simulate), ("os", simulate_os)):
            m = map_conv(layer.x_int, layer.w_int, ArraySpec(4, 4, psum_bits=14, dataflow=dataflow), layer.padding,
                         layer.stride, layer.bias_int)
            golden = golden_model(m)
            out, res = runner(m, f"{layer.name}_{dataflow}")
            assert np.array_equal(out, golden.outputs), (layer.name, dataflow)
            assert res["cycles"] == golden.cycles.total, (layer.name, dataflow)
