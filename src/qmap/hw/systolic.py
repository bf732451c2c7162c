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

Every psum register and accumulator value goes through :class:`PsumArithmetic`: with ``spec.overflow ==
"error"`` the values are exact and, if any does not fit ``psum_bits``, the run raises :class:`HardwareError`
naming the bits the layer needs and the bits the array has; with ``"saturate"`` each value is clamped to the
psum range as it is formed (the RTL's ``qmap_sat_add``). ``SimResult.psum_bits_needed`` is the width every
value of the run fits (before clamping).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import HardwareError
from .cycles import CycleReport, fold_interval
from .mapping import MappedConv, fold_input_indices
from .spec import ArraySpec, int_range, signed_bits_needed


@dataclass(frozen=True)
class SimResult:
    """``fold_psums[ot, it, k, p, c]`` (array outputs), ``outputs[ot, p, c]`` (after SFU+ReLU), cycles, wall time."""

    fold_psums: np.ndarray
    outputs: np.ndarray
    cycles: CycleReport
    engine: str
    wall_s: float
    psum_bits_needed: int = 0

    @property
    def macs_per_s(self) -> float:
        return self.cycles.macs / self.wall_s if self.wall_s > 0 else float("inf")


class PsumArithmetic:
    """The array's partial-sum arithmetic: ``self(values)`` records the extent of freshly formed sums and
    returns them clamped to the ``psum_bits`` range (``overflow="saturate"``) or unchanged (``"error"``);
    :meth:`check` raises if, under ``"error"``, any recorded value does not fit."""

    def __init__(self, spec: ArraySpec):
        self.bits, self.saturate = spec.psum_bits, spec.overflow == "saturate"
        self.range = int_range(spec.psum_bits, signed=True)
        self.lo = self.hi = 0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if values.size:
            self.lo, self.hi = min(self.lo, int(values.min())), max(self.hi, int(values.max()))
        return np.clip(values, *self.range) if self.saturate else values

    @property
    def needed(self) -> int:
        return signed_bits_needed(self.lo, self.hi)

    def check(self) -> None:
        if not self.saturate and self.needed > self.bits:
            raise HardwareError(f"partial sums reach [{self.lo}, {self.hi}]: they need {self.needed} bits, the "
                                f"array has psum_bits={self.bits} (widen psum_bits or set overflow: saturate)")


def _report(m: MappedConv, total: int) -> CycleReport:
    R, C, N = m.spec.rows, m.spec.cols, m.geom.n_positions
    F, I = m.n_folds, fold_interval(N, m.spec)
    return CycleReport(total=total, load=1, stream=(F - 1) * I + N, drain=total - ((F - 1) * I + N) - 1,
                       stall=(F - 1) * (I - N), fill_overlapped=R + C - 2, macs=m.geom.macs, pe_slots=R * C * total)


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
    arith = PsumArithmetic(m.spec)
    if engine == "cycle":
        psums, outputs, total = _run_cycles(m, arith)
    elif engine == "wavefront":
        psums, outputs, total = _run_wavefront(m, arith)
    else:
        raise HardwareError(f"unknown engine {engine!r} (cycle | wavefront)")
    arith.check()
    return SimResult(psums, outputs, _report(m, total), engine, time.perf_counter() - t0, arith.needed)


def _run_wavefront(m: MappedConv, arith: PsumArithmetic):
    R, C, N, K = m.spec.rows, m.spec.cols, m.geom.n_positions, m.geom.n_kij
    x_stream = m.x_tiles[:, :, fold_input_indices(m.geom)]  # [it, r, k, p]
    psum = np.zeros((m.n_otiles, m.n_itiles, K, N, C), dtype=np.int64)
    for r in range(R):  # the vector passes row r: every PE(r, c) register holds the partial sum over rows 0..r
        psum = arith(psum + x_stream[None, :, r, :, :, None] * m.w_tiles[:, :, :, None, :, r])
    folds = psum.reshape(m.n_otiles, m.n_itiles * K, N, C)
    bias = arith(m.bias_tiles)[:, None, :]  # the SFU starts each output tile from its bias
    if arith.saturate:  # each SFU sum is clamped as it is formed: accumulate fold by fold
        acc = np.broadcast_to(bias, (m.n_otiles, N, C))
        for j in range(folds.shape[1]):
            acc = arith(acc + folds[:, j])
    else:
        acc = arith(np.cumsum(folds, axis=1) + bias[:, None])[:, -1]
    outputs = np.maximum(acc, 0)
    F, I = m.n_folds, fold_interval(N, m.spec)
    last_issue = (F - 1) * I + N - 1
    sfu_write = last_issue + R + C  # L0 register (1) + R rows + deskew to column C-1 (C-1)
    return psum, outputs, sfu_write + 1


def _run_cycles(m: MappedConv, arith: PsumArithmetic):
    """Register-transfer model; mirrors rtl/qmap_core.v cycle for cycle."""
    R, C, N, K = m.spec.rows, m.spec.cols, m.geom.n_positions, m.geom.n_kij
    F, I = m.n_folds, fold_interval(N, m.spec)
    idx = fold_input_indices(m.geom)
    bias = arith(m.bias_tiles)
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
        new_psum = arith(np.where(v_in, p_in + w_use * a_in, 0))
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
            acc[tq] = arith((bias[tot] if first else acc[tq]) + aligned)
            if tit == m.n_itiles - 1 and tk == K - 1:
                outputs[tot, tq] = np.maximum(acc[tq], 0)
                if tf == F - 1 and tq == N - 1:
                    done_at = t + 1
        t += 1
    return psums, outputs, done_at
