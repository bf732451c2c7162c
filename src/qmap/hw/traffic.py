"""Memory traffic and energy per layer for the two dataflows of the core, counted from their schedules.

On-chip SRAM accesses (counted in values and in bits; every read or write of one value of its width):

Weight-stationary (:mod:`qmap.hw.systolic`, F = n_otiles·n_itiles·K folds of N vectors):
- weights: each fold writes its R×C weights once into the shadow registers: F·R·C reads of w_bits;
- activations: each fold streams N input vectors of R values: F·N·R reads of a_bits;
- psums: the SFU accumulator holds N×C partial sums per output tile; every fold but an output tile's first
  reads them, every fold writes them: (F − n_otiles)·N·C reads and F·N·C writes of psum_bits;
- outputs: n_otiles·N·C writes of psum_bits (ReLU(bias + acc), requantized by the host).

Output-stationary (:mod:`qmap.hw.systolic_os`, n_ptiles·n_otiles tiles of R positions × C channels,
K' = Cin·kh·kw reduction steps; only live rows/columns are fed):
- activations: each output-channel tile re-reads every position's K' inputs: n_otiles·N·K' reads;
- weights: each position tile re-reads every live channel's K' weights: n_ptiles·Cout·K' reads;
- psums: none leave the PEs (the accumulators are the PEs' registers); outputs: N·Cout writes.

Off-chip (DRAM) traffic for an on-chip buffer of ``buffer_bytes``, half for activations and half for
weights (a stated, simple model): a layer's input, weights and output cross once when they fit their half;
an input that does not fit is re-fetched once per pass over it (WS: once per output-channel tile, its folds
run otile → itile → kij; OS: once per output-channel tile), weights that do not fit are re-fetched once per
pass (WS: never — each fold's weights are used in one stream; OS: once per position tile); outputs are
written once.

Energy uses the 45 nm figures of M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014 (:data:`HOROWITZ_45NM_PJ`): a MAC = one 8-bit multiply (0.2 pJ, an upper bound for 2–8-bit
operands) + one 32-bit add (0.1 pJ, an upper bound for the 16–24-bit accumulator); SRAM 20 pJ per 64-bit
access of a 32 KB array, DRAM 1.3–2.6 nJ per 64-bit access (we use 2.0 nJ); bits are charged pro rata
(energy per bit = per-access energy / 64).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cycles import ceil_div, n_folds
from .mapping import ConvGeometry
from .spec import ArraySpec

HOROWITZ_45NM_PJ = {"mult_8b": 0.2, "add_32b": 0.1, "sram_32kb_64b": 20.0, "dram_64b": 2000.0}
DEFAULT_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class LayerTraffic:
    dataflow: str
    sram_reads: dict[str, int]   # values read per kind: activations, weights, psums
    sram_writes: dict[str, int]  # values written: psums, outputs
    sram_bits: int               # every access of its value's width
    dram_bits: int
    macs: int

    def energy_pj(self, table: dict[str, float] = HOROWITZ_45NM_PJ) -> dict[str, float]:
        mac = self.macs * (table["mult_8b"] + table["add_32b"])
        sram = self.sram_bits * table["sram_32kb_64b"] / 64
        dram = self.dram_bits * table["dram_64b"] / 64
        return {"mac": mac, "sram": sram, "dram": dram, "total": mac + sram + dram}

    def to_dict(self) -> dict:
        return {"dataflow": self.dataflow, "sram_reads": self.sram_reads, "sram_writes": self.sram_writes,
                "sram_bits": self.sram_bits, "dram_bits": self.dram_bits, "macs": self.macs,
                "energy_pj": self.energy_pj()}


def layer_traffic(geom: ConvGeometry, spec: ArraySpec, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> LayerTraffic:
    """SRAM and DRAM traffic of one conv layer in ``spec.dataflow`` (see the module docstring)."""
    R, C, N, K = spec.rows, spec.cols, geom.n_positions, geom.n_kij
    a, w, p = spec.a_bits, spec.w_bits, spec.psum_bits
    n_ot = ceil_div(geom.out_channels, C)
    in_bits = geom.in_channels * geom.height * geom.width * a
    w_bits_total = geom.out_channels * geom.in_channels * K * w
    out_bits = geom.out_channels * N * p
    half = buffer_bytes * 8 // 2
    if spec.dataflow == "ws":
        F = n_folds(geom, spec)
        reads = {"activations": F * N * R, "weights": F * R * C, "psums": (F - n_ot) * N * C}
        writes = {"psums": F * N * C, "outputs": n_ot * N * C}
        in_passes, w_passes = n_ot, 1
    else:
        kr = geom.in_channels * K
        n_pt = ceil_div(N, R)
        reads = {"activations": n_ot * N * kr, "weights": n_pt * geom.out_channels * kr, "psums": 0}
        writes = {"psums": 0, "outputs": N * geom.out_channels}
        in_passes, w_passes = n_ot, n_pt
    sram_bits = (reads["activations"] * a + reads["weights"] * w + (reads["psums"] + writes["psums"]) * p
                 + writes["outputs"] * p)
    dram_bits = (in_bits * (1 if in_bits <= half else in_passes) + w_bits_total * (1 if w_bits_total <= half
                                                                                  else w_passes) + out_bits)
    return LayerTraffic(spec.dataflow, reads, writes, sram_bits, dram_bits, geom.macs)
