"""Golden model of an R×C *output-stationary* array (second dataflow; no RTL): values and cycles.

Each PE(r, c) owns one output: position ``p = pt·R + r`` of position tile pt and output channel
``o = ot·C + c`` of output-channel tile ot. A tile reduces over ``K = in_channels·kh·kw`` steps
``k = i·(kh·kw) + kij``: activation ``A[p, k] = x_pad[i, nij(kij, p)]`` enters row r from the left and weight
``B[o, k] = w[o, i, ki, kj]`` enters column c from the top, each edge skewed (row r delayed r cycles, column c
delayed c cycles); activations move right and weights move down one PE per cycle, so PE(r, c) performs

    acc[r, c] ← acc[r, c] + A[p, k] · B[o, k]        at tile cycle k + r + c.

Positions past N and channels past O are not fed (idle PEs). After the last MAC (tile cycle K + R + C - 3) the
accumulators are shifted down the columns, one row per cycle, for R cycles; the bottom row enters the SFU,
which writes ``ReLU(bias[o] + acc)`` for its C channels. Tiles run one after the other in the order
ot → pt, the drain *not* overlapped with the next tile's fill (no double-buffered accumulators), so a tile
takes ``T = K + R + C - 2 + R`` cycles and the layer ``n_tiles·T`` (see :func:`os_cycles`).

Two engines give identical values and counts: ``engine="cycle"`` steps every register every cycle (NumPy over
the R×C grid), ``engine="vectorised"`` computes all tiles at once (chunked einsum/cumsum over k), timing from
the schedule. Every PE accumulator value (each prefix over k) and every SFU sum goes through
:class:`~qmap.hw.systolic.PsumArithmetic` (``overflow``: error naming the bits needed, or saturate).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import HardwareError
from .cycles import CycleReport, ceil_div
from .mapping import ConvGeometry, MappedConv, fold_input_indices
from .spec import ArraySpec
from .systolic import PsumArithmetic, SimResult

ENGINES = ("cycle", "vectorised")


def os_tile_cycles(geom: ConvGeometry, spec: ArraySpec) -> int:
    """T = K + (R + C - 2) + R: K issue cycles, the skew fill to PE(R-1, C-1), an R-cycle drain."""
    return geom.in_channels * geom.n_kij + 2 * spec.rows + spec.cols - 2


def os_n_tiles(geom: ConvGeometry, spec: ArraySpec) -> int:
    return ceil_div(geom.n_positions, spec.rows) * ceil_div(geom.out_channels, spec.cols)


def os_cycles(geom: ConvGeometry, spec: ArraySpec) -> CycleReport:
    """Closed form: ``total = n_tiles·(K + 2R + C - 2)``, n_tiles = ceil(N/R)·ceil(O/C), K = I·kh·kw.

    Fields: ``load = 0`` (no weight preload: both operands stream), ``stream = n_tiles·K`` issue cycles,
    ``stall = n_tiles·(R + C - 2)`` skew-fill cycles in which no operand enters (not overlapped),
    ``drain = n_tiles·R``, ``fill_overlapped = 0``; load + stream + stall + drain = total."""
    R, C, n = spec.rows, spec.cols, os_n_tiles(geom, spec)
    K = geom.in_channels * geom.n_kij
    total = n * os_tile_cycles(geom, spec)
    return CycleReport(total=total, load=0, stream=n * K, drain=n * R, stall=n * (R + C - 2), fill_overlapped=0,
                       macs=geom.macs, pe_slots=R * C * total)


def os_operands(m: MappedConv) -> tuple[np.ndarray, np.ndarray]:
    """``A[p, k]`` (``[n_ptiles·R, K]``, rows past N zero) and ``B[o, k]`` (``[n_otiles·C, K]``)."""
    g, R = m.geom, m.spec.rows
    x = m.x_tiles.reshape(-1, g.n_padded)[: g.in_channels]
    a = x[:, fold_input_indices(g)].reshape(g.in_channels * g.n_kij, g.n_positions).T
    a_pad = np.zeros((ceil_div(g.n_positions, R) * R, a.shape[1]), dtype=np.int64)
    a_pad[: g.n_positions] = a
    w = m.w_tiles.transpose(0, 3, 1, 4, 2).reshape(m.n_otiles * m.spec.cols, m.n_itiles * R, g.n_kij)
    return a_pad, np.ascontiguousarray(w[:, : g.in_channels].reshape(w.shape[0], -1))


def simulate_os(m: MappedConv, engine: str = "vectorised") -> SimResult:
    """Run a mapped conv through the output-stationary golden model (array shape from ``m.spec``).

    ``outputs[ot, p, c]`` as for the WS model; ``fold_psums[ot, p, c]`` holds the drained accumulators
    (the raw conv sums, before bias)."""
    if engine not in ENGINES:
        raise HardwareError(f"unknown engine {engine!r} ({' | '.join(ENGINES)})")
    t0 = time.perf_counter()
    a, b = os_operands(m)
    run = _run_cycles if engine == "cycle" else _run_vectorised
    arith = PsumArithmetic(m.spec)
    sums, outputs, total, macs = run(m, a, b, arith)
    if macs != m.geom.macs:
        raise AssertionError(f"OS engine performed {macs} MACs, the layer has {m.geom.macs}")
    arith.check()
    rep = os_cycles(m.geom, m.spec)
    report = CycleReport(**{**rep.__dict__, "total": total, "pe_slots": m.spec.rows * m.spec.cols * total})
    return SimResult(sums, outputs, report, engine, time.perf_counter() - t0, arith.needed)


def _sfu(m: MappedConv, sums: np.ndarray, arith: PsumArithmetic) -> np.ndarray:
    """``sums[ot, p, c]`` → ReLU(bias + sums) in the array's psum arithmetic."""
    return np.maximum(arith(sums + arith(m.bias_tiles)[:, None, :]), 0)


def _run_vectorised(m: MappedConv, a: np.ndarray, b: np.ndarray, arith: PsumArithmetic,
                    chunk_elems: int = 1 << 22):
    """All tiles at once: prefix sums over k in chunks (every accumulator value recorded); saturating
    arithmetic clamps each prefix as it is formed, so it steps k one at a time."""
    g, C = m.geom, m.spec.cols
    n_p, K = a.shape
    running = np.zeros((b.shape[0], n_p), dtype=np.int64)
    step = 1 if arith.saturate else max(1, chunk_elems // running.size)
    for k0 in range(0, K, step):
        prefix = running[:, :, None] + np.cumsum(b[:, None, k0: k0 + step] * a[None, :, k0: k0 + step], axis=2)
        running = arith(prefix)[:, :, -1]
    sums = running.reshape(m.n_otiles, C, n_p).transpose(0, 2, 1)[:, : g.n_positions]
    macs = g.out_channels * g.n_positions * K
    return sums, _sfu(m, sums, arith), os_n_tiles(g, m.spec) * os_tile_cycles(g, m.spec), macs


def _run_cycles(m: MappedConv, a: np.ndarray, b: np.ndarray, arith: PsumArithmetic):
    """Register-level model: per cycle, operand registers shift right/down, accumulators MAC, then drain."""
    g, R, C = m.geom, m.spec.rows, m.spec.cols
    K, N, n_pt = a.shape[1], g.n_positions, a.shape[0] // R
    rows, cols = np.arange(R), np.arange(C)
    sums = np.zeros((m.n_otiles, n_pt * R, C), dtype=np.int64)
    t, macs = 0, 0
    for ot in range(m.n_otiles):
        col_live = ot * C + cols < g.out_channels
        for pt in range(n_pt):
            row_live = pt * R + rows < N
            act, act_v = np.zeros((R, C), np.int64), np.zeros((R, C), bool)
            wgt, wgt_v = np.zeros((R, C), np.int64), np.zeros((R, C), bool)
            acc = np.zeros((R, C), np.int64)
            for tc in range(K + R + C - 2):  # feed + skew fill
                k_row, k_col = tc - rows, tc - cols  # step entering row r / column c this cycle (after the skew)
                left_v = row_live & (k_row >= 0) & (k_row < K)
                top_v = col_live & (k_col >= 0) & (k_col < K)
                left = np.where(left_v, a[pt * R + rows, np.clip(k_row, 0, K - 1)], 0)
                top = np.where(top_v, b[ot * C + cols, np.clip(k_col, 0, K - 1)], 0)
                act = np.concatenate([left[:, None], act[:, :-1]], axis=1)
                act_v = np.concatenate([left_v[:, None], act_v[:, :-1]], axis=1)
                wgt = np.concatenate([top[None, :], wgt[:-1]], axis=0)
                wgt_v = np.concatenate([top_v[None, :], wgt_v[:-1]], axis=0)
                fire = act_v & wgt_v
                acc = arith(acc + np.where(fire, act * wgt, 0))
                macs += int(fire.sum())
                t += 1
            for d in range(R):  # drain: the bottom row enters the SFU, the rest shift down
                sums[ot, pt * R + R - 1 - d] = acc[R - 1]
                acc = np.concatenate([np.zeros((1, C), np.int64), acc[:-1]], axis=0)
                t += 1
    sums = sums[:, :N]
    return sums, _sfu(m, sums, arith), t, macs
