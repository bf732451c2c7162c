"""cocotb testbench of ``rtl/qmap_core.v``: loads an exported folder, runs the layer, checks every psum and
output against the files, and counts cycles from ``start`` to ``done``.

Environment: ``QMAP_HW_DIR`` (exported folder), ``QMAP_HW_RESULT`` (JSON written here: cycles, mismatch
counts, wall time of the run phase). Run it through :func:`qmap.hw.sim.run_cocotb`.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer

from .export import read_export
from .mapping import fold_input_indices

CLOCK_NS = 10


def pack(values, bits: int) -> int:
    """Lane i of ``values`` into bits [i·bits, (i+1)·bits) (two's complement), like a course-file line."""
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (i * bits) for i, v in enumerate(values))


def unpack(word: int, n: int, bits: int) -> list[int]:
    """Inverse of :func:`pack` with sign extension."""
    out = []
    for i in range(n):
        v = (word >> (i * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


async def _load_memories(dut, vec) -> None:
    m = vec.mapped
    R, C, K = m.spec.rows, m.spec.cols, m.geom.n_kij
    for it in range(m.n_itiles):
        for nij in range(m.geom.n_padded):
            dut.act_we.value, dut.act_waddr.value = 1, it * m.geom.n_padded + nij
            dut.act_wdata.value = pack(m.x_tiles[it, :, nij], m.spec.a_bits)
            await RisingEdge(dut.clk)
    dut.act_we.value = 0
    for ot in range(m.n_otiles):
        for it in range(m.n_itiles):
            for k in range(K):
                for c in range(C):
                    dut.w_we.value, dut.w_waddr.value = 1, ((ot * m.n_itiles + it) * K + k) * C + c
                    dut.w_wdata.value = pack(m.w_tiles[ot, it, k, c, :R], m.spec.w_bits)
                    await RisingEdge(dut.clk)
    dut.w_we.value = 0
    for ot in range(m.n_otiles):
        dut.bias_we.value, dut.bias_waddr.value = 1, ot
        dut.bias_wdata.value = pack(m.bias_tiles[ot], m.spec.psum_bits)
        await RisingEdge(dut.clk)
    dut.bias_we.value = 0


def _configure(dut, m) -> None:
    """The layer's runtime configuration (what the plain testbench reads from qmap_layer.txt)."""
    g = m.geom
    for name, value in (("wp", g.padded_w), ("npad", g.n_padded), ("wo", g.out_w), ("n", g.n_positions),
                        ("kh", g.kh), ("kw", g.kw), ("s", g.stride), ("it", m.n_itiles), ("ot", m.n_otiles),
                        ("sat", int(m.spec.overflow == "saturate")), ("os", int(m.spec.dataflow == "os")),
                        ("cin", g.in_channels), ("cout", g.out_channels)):
        getattr(dut, f"cfg_{name}").value = value


@cocotb.test()
async def run_exported_layer(dut):
    vec = read_export(os.environ["QMAP_HW_DIR"])
    m = vec.mapped
    C, P, K, N = m.spec.cols, m.spec.psum_bits, m.geom.n_kij, m.geom.n_positions
    nij = fold_input_indices(m.geom)
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, units="ns").start())
    for sig in (dut.start, dut.act_we, dut.w_we, dut.bias_we, dut.out_raddr):
        sig.value = 0
    _configure(dut, m)
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await _load_memories(dut, vec)

    dut.start.value = 1
    await RisingEdge(dut.clk)  # start sampled here: cycle 0 begins
    dut.start.value = 0
    t0 = time.perf_counter()
    cycles, psum_bad, psums_seen = 0, [], 0
    max_cycles = 10 * (m.n_folds * max(N, m.spec.rows, C) + N + m.spec.rows + C)
    while True:
        await RisingEdge(dut.clk)
        cycles += 1
        await ReadOnly()
        if dut.psum_valid.value:
            f, q = int(dut.psum_fold.value), int(dut.psum_pos.value)
            ot, rest = divmod(f, m.n_itiles * K)
            it, k = divmod(rest, K)
            got = unpack(int(dut.psum_vec.value), C, P)
            psums_seen += 1
            if got != vec.psums[ot, it, k, nij[k, q]].tolist():
                psum_bad.append((f, q))
        if dut.done.value or cycles >= max_cycles:
            break
    run_wall = time.perf_counter() - t0
    await RisingEdge(dut.clk)
    out_bad = []
    for ot in range(m.n_otiles):
        for p in range(N):
            dut.out_raddr.value = ot * N + p
            await Timer(1, units="ns")
            if unpack(int(dut.out_rdata.value), C, P) != vec.outputs[ot, p].tolist():
                out_bad.append((ot, p))
    result = {"cycles": cycles, "done": bool(dut.done.value), "psums_checked": psums_seen,
              "psum_mismatches": len(psum_bad), "outputs_checked": m.n_otiles * N,
              "output_mismatches": len(out_bad), "run_wall_s": run_wall, "cycles_per_s": cycles / run_wall}
    with open(os.environ["QMAP_HW_RESULT"], "w") as fh:
        json.dump(result, fh)
    assert result["done"], f"done never rose within {max_cycles} cycles"
    assert psums_seen == m.n_folds * N, f"saw {psums_seen} psum vectors, expected {m.n_folds * N}"
    assert not psum_bad, f"psum mismatches at (fold, position) {psum_bad[:5]}"
    assert not out_bad, f"output mismatches at (otile, position) {out_bad[:5]}"
