"""Golden model of the double-buffered weight-stationary array: values and cycles, bit-exact with the RTL.

Per cycle t the controller is in fold ``f = t // I`` at step ``q = t % I`` (``I = max(N, R, C)``, folds in the
order of :mod:`qmap.hw.mapping`). While ``q < C`` it writes weight column q of fold f into the PEs' *shadow*
registers; while ``q < N`` it issues input vector q (``x[:, nij(kij, q)]``) to the L0, tagged ``swap`` when
q = 0. The L0 registers the vector once and delays row r by r more cycles (diagonal skew), so PE(r, c) sees
vector q of fold f at cycle ``f·I + q + 1 + r + c``. A PE computes
``psum_out ← psum_in + w·a`` with ``w = shadow`` (and copies shadow→active) on a swap vector, else
``w = active``; activations move right, psums move down. Column c's bottom psum is delayed C-1-c cycles so a
whole C-vector reaches the SFU at ``issue + R + C``; the SFU adds it to the accumulator of position q
(starting from the bias on the otile's first fold) and, on the otile's last fold, writes ReLU(acc).
``done`` rises one cycle after the last write: ``(F-1)·I + N + R + C`` (see :mod:`qmap.hw.cycles`).

Two engines produce the same values and counts:

- ``engine="cycle"`` steps every register every cycle (NumPy over the R×C grid) — the reference;
- ``engine="wavefront"`` evaluates the same dataflow in the skewed frame: a vector's psum is built row by
  row for all vectors of all folds at once (NumPy over folds × positions × columns), with every PE's psum
  register range-checked; its timing comes from the issue schedule. Whole VGG16 layers take seconds.

Every psum register and accumulator value is checked against ``psum_bits``; a value that does not fit raises
:class:`HardwareError` instead of wrapping.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import HardwareError
from .cycles import CycleReport, fold_interval
from .mapping import MappedConv, fold_input_indices
from .spec import int_range


@dataclass(frozen=True)
class SimResult:
    """``fold_psums[ot, it, k, p, c]`` (array outputs), ``outputs[ot, p, c]`` (after SFU+ReLU), cycles, wall time."""

    fold_psums: np.ndarray
    outputs: np.ndarray
    cycles: CycleReport
    engine: str
    wall_s: float

    @property
    def macs_per_s(self) -> float:
        return self.cycles.macs / self.wall_s if self.wall_s > 0 else float("inf")


def _check_psum(values: np.ndarray, bits: int, what: str) -> None:
    lo, hi = int_range(bits, signed=True)
    if values.size and (values.min() < lo or values.max() > hi):
        bad = values.min() if values.min() < lo else values.max()
        raise HardwareError(f"{what}: value {int(bad)} overflows the {bits}-bit psum register [{lo}, {hi}]; "
                            f"declare a wider psum_bits")


def _report(m: MappedConv, total: int) -> CycleReport:
    R, C, N = m.spec.rows, m.spec.cols, m.geom.n_positions
    F, I = m.n_folds, fold_interval(N, m.spec)
    return CycleReport(total=total, load=1, stream=(F - 1) * I + N, drain=total - ((F - 1) * I + N) - 1,
                       stall=(F - 1) * (I - N), fill_overlapped=R + C - 2, macs=m.geom.macs, pe_slots=R * C * total)


def _bias_tiles(m: MappedConv) -> np.ndarray:
    b = np.zeros(m.n_otiles * m.spec.cols, dtype=np.int64)
    b[: m.geom.out_channels] = m.bias
    return b.reshape(m.n_otiles, m.spec.cols)


def _fold_coords(m: MappedConv, f: int) -> tuple[int, int, int]:
    ot, rest = divmod(f, m.n_itiles * m.geom.n_kij)
    it, k = divmod(rest, m.geom.n_kij)
    return ot, it, k


def simulate(m: MappedConv, engine: str = "wavefront") -> SimResult:
    """Run a mapped conv through the weight-stationary golden model."""
    if m.spec.dataflow != "ws":
        raise HardwareError(f"simulate() models the weight-stationary core; use qmap.hw.systolic_os for "
                            f"dataflow {m.spec.dataflow!r}")
    t0 = time.perf_counter()
    if engine == "cycle":
        psums, outputs, total = _run_cycles(m)
    elif engine == "wavefront":
        psums, outputs, total = _run_wavefront(m)
    else:
        raise HardwareError(f"unknown engine {engine!r} (cycle | wavefront)")
    return SimResult(psums, outputs, _report(m, total), engine, time.perf_counter() - t0)


def _run_wavefront(m: MappedConv):
    R, C, N, K, P = m.spec.rows, m.spec.cols, m.geom.n_positions, m.geom.n_kij, m.spec.psum_bits
    x_stream = m.x_tiles[:, :, fold_input_indices(m.geom)]  # [it, r, k, p]
    psum = np.zeros((m.n_otiles, m.n_itiles, K, N, C), dtype=np.int64)
    for r in range(R):  # the vector passes row r: every PE(r, c) register holds the partial sum over rows 0..r
        psum += x_stream[None, :, r, :, :, None] * m.w_tiles[:, :, :, None, :, r]
        _check_psum(psum, P, f"psum register of PE row {r}")
    acc = np.cumsum(psum.reshape(m.n_otiles, m.n_itiles * K, N, C), axis=1) + _bias_tiles(m)[:, None, None, :]
    _check_psum(acc, P, "SFU accumulator")
    outputs = np.maximum(acc[:, -1], 0)
    F, I = m.n_folds, fold_interval(N, m.spec)
    last_issue = (F - 1) * I + N - 1
    sfu_write = last_issue + R + C  # L0 register (1) + R rows + deskew to column C-1 (C-1)
    return psum, outputs, sfu_write + 1


def _run_cycles(m: MappedConv):
    """Register-transfer model; mirrors rtl/qmap_core.v cycle for cycle."""
    R, C, N, K, P = m.spec.rows, m.spec.cols, m.geom.n_positions, m.geom.n_kij, m.spec.psum_bits
    F, I = m.n_folds, fold_interval(N, m.spec)
    idx = fold_input_indices(m.geom)
    bias = _bias_tiles(m)
    a = np.zeros((R, C), np.int64)
    a_valid = np.zeros((R, C), bool)
    a_swap = np.zeros((R, C), bool)
    psum_reg = np.zeros((R, C), np.int64)
    shadow = np.zeros((R, C), np.int64)
    active = np.zeros((R, C), np.int64)
    empty = (np.zeros(R, np.int64), False, False)
    l0 = deque([empty] * R, maxlen=R)  # l0[-1 - d] = vector registered d cycles ago (d = 0 .. R-1)
    bottom = deque([(np.zeros(C, np.int64), np.zeros(C, bool))] * C, maxlen=C)  # last C bottom-row outputs
    tags = deque([None] * (R + C), maxlen=R + C)  # (f, q) of the vector issued R+C cycles ago at the left end
    rows = np.arange(R)
    acc = np.zeros((N, C), np.int64)
    psums = np.zeros((m.n_otiles, m.n_itiles, K, N, C), np.int64)
    outputs = np.zeros((m.n_otiles, N, C), np.int64)
    t, done_at = 0, None
    while done_at is None:
        f, q = divmod(t, I)
        busy = f < F
        ot, it, k = _fold_coords(m, f) if busy else (0, 0, 0)
        # -- combinational inputs of this cycle
        col_in = np.array([l0[-1 - r][0][r] for r in rows])
        valid_in = np.array([l0[-1 - r][1] for r in rows])
        swap_in = np.array([l0[-1 - r][2] for r in rows])
        a_in = np.concatenate([col_in[:, None], a[:, :-1]], axis=1)
        v_in = np.concatenate([valid_in[:, None], a_valid[:, :-1]], axis=1)
        s_in = np.concatenate([swap_in[:, None], a_swap[:, :-1]], axis=1)
        p_in = np.concatenate([np.zeros((1, C), np.int64), psum_reg[:-1]], axis=0)
        w_use = np.where(s_in, shadow, active)
        aligned = np.array([bottom[c][0][c] for c in range(C)])  # column c delayed C-1-c cycles
        aligned_valid = bottom[0][1][0]
        tag = tags[0]
        # -- clock edge
        new_psum = np.where(v_in, p_in + w_use * a_in, 0)
        _check_psum(new_psum, P, f"PE psum register at cycle {t}")
        active = np.where(v_in & s_in, shadow, active)
        if busy and q < C:
            shadow = shadow.copy()
            shadow[:, q] = m.w_tiles[ot, it, k, q, :]
        a, a_valid, a_swap, psum_reg = a_in, v_in, s_in, new_psum
        bottom.append((psum_reg[R - 1].copy(), a_valid[R - 1].copy()))
        issue = busy and q < N
        l0.append((m.x_tiles[it, :, idx[k, q]], True, q == 0) if issue else empty)
        tags.append((f, q) if issue else None)
        if aligned_valid:
            tf, tq = tag
            tot, tit, tk = _fold_coords(m, tf)
            psums[tot, tit, tk, tq] = aligned
            first = tit == 0 and tk == 0
            acc[tq] = (bias[tot] if first else acc[tq]) + aligned
            _check_psum(acc[tq], P, f"SFU accumulator at cycle {t}")
            if tit == m.n_itiles - 1 and tk == K - 1:
                outputs[tot, tq] = np.maximum(acc[tq], 0)
                if tf == F - 1 and tq == N - 1:
                    done_at = t + 1
        t += 1
    return psums, outputs, done_at
