"""Traffic counts of the two dataflows on hand-countable layers, and the off-chip model's bounds."""

import pytest

from qmap.hw.mapping import ConvGeometry
from qmap.hw.spec import ArraySpec
from qmap.hw.traffic import HOROWITZ_45NM_PJ, layer_traffic

LAYER_8X8 = ConvGeometry(8, 8, 4, 4)  # 8 -> 8 channels, 4x4 map, 3x3 kernel: 9 folds of N = 16 on 8x8


def test_weight_stationary_counts_of_the_8x8_layer():
    t = layer_traffic(LAYER_8X8, ArraySpec())
    assert t.sram_reads == {"activations": 9 * 16 * 8, "weights": 9 * 64, "psums": 8 * 16 * 8}
    assert t.sram_writes == {"psums": 9 * 16 * 8, "outputs": 16 * 8}
    assert t.sram_bits == 9 * 16 * 8 * 4 + 9 * 64 * 4 + (8 + 9) * 16 * 8 * 16 + 16 * 8 * 16
    # everything fits a 64 KiB buffer: input, weights and output cross the chip edge once
    assert t.dram_bits == 8 * 16 * 4 + 8 * 8 * 9 * 4 + 8 * 16 * 16
    assert t.macs == 8 * 8 * 9 * 16


def test_output_stationary_counts_of_the_8x8_layer():
    t = layer_traffic(LAYER_8X8, ArraySpec(dataflow="os"))
    # one channel tile re-reads every position's 72 inputs; two position tiles each read the 8x72 weights
    assert t.sram_reads == {"activations": 16 * 72, "weights": 2 * 8 * 72, "psums": 0}
    assert t.sram_writes == {"psums": 0, "outputs": 16 * 8}


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_small_buffer_refetches_and_energy_adds_up(dataflow):
    g = ConvGeometry(64, 64, 16, 16)
    spec = ArraySpec(dataflow=dataflow)
    big, small = layer_traffic(g, spec, 1 << 30), layer_traffic(g, spec, 1024)
    compulsory = 64 * 256 * 4 + 64 * 64 * 9 * 4 + 64 * 256 * 16
    assert big.dram_bits == compulsory < small.dram_bits
    e = small.energy_pj()
    assert e["total"] == pytest.approx(e["mac"] + e["sram"] + e["dram"])
    assert e["dram"] == pytest.approx(small.dram_bits * HOROWITZ_45NM_PJ["dram_64b"] / 64)
