"""Closed-form cycle counts (the golden model's simulated counts are tested against these).

Weight-stationary with double-buffered weights (this project's core), for a conv mapped as in
:mod:`qmap.hw.mapping` (F = n_otiles·n_itiles·K folds, N positions per fold):

- fold interval ``I = max(N, R, C)``: a fold streams N vectors; the next fold's weights are written one column
  per cycle into the shadow registers (≥ C cycles) and a column's shadow is free only once the previous fold's
  first vector has passed its R rows (≥ R cycles);
- ``total = (F - 1)·I + N + R + C``: the last vector is issued at (F-1)·I + N - 1, then takes 1 cycle in
  the L0 register, R rows, the output deskew and the SFU write (R + C in all) before ``done`` rises;
- phases: ``load = 1`` (only the first column write is exposed), ``stream = (F-1)·I + N`` issue cycles
  (of which ``stall = (F-1)·(I-N)`` bubbles), ``drain = R + C - 1``; the fill (R + C - 2 cycles for the first
  vector to reach the far PE) overlaps the stream.

Reference without overlap (SCALE-Sim's weight-stationary model, the usual course design): the conv as a GEMM
with Cin·K filter rows on the array rows, ``folds = ceil(Cin·K/R)·ceil(Cout/C)`` and
``folds·(2R + C + N - 2) - 1`` cycles (341 for the 8→8 4×4 layer on 8×8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .mapping import ConvGeometry
from .spec import ArraySpec


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class CycleReport:
    total: int
    load: int
    stream: int
    drain: int
    stall: int
    fill_overlapped: int
    macs: int
    pe_slots: int

    @property
    def utilisation(self) -> float:
        """Useful MACs / (R·C·total)."""
        return self.macs / self.pe_slots if self.pe_slots else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "utilisation": self.utilisation}


def fold_interval(n_positions: int, spec: ArraySpec) -> int:
    return max(n_positions, spec.rows, spec.cols)


def n_folds(geom: ConvGeometry, spec: ArraySpec) -> int:
    return ceil_div(geom.in_channels, spec.rows) * ceil_div(geom.out_channels, spec.cols) * geom.n_kij


def ws_cycles(geom: ConvGeometry, spec: ArraySpec) -> CycleReport:
    """Closed-form cycle report of the double-buffered weight-stationary core."""
    R, C, N = spec.rows, spec.cols, geom.n_positions
    F, I = n_folds(geom, spec), fold_interval(N, spec)
    total = (F - 1) * I + N + R + C
    return CycleReport(total=total, load=1, stream=(F - 1) * I + N, drain=R + C - 1, stall=(F - 1) * (I - N),
                       fill_overlapped=R + C - 2, macs=geom.macs, pe_slots=R * C * total)


def ws_no_overlap_cycles(geom: ConvGeometry, spec: ArraySpec) -> int:
    """SCALE-Sim-style weight-stationary count, weights reloaded between folds (the reference design)."""
    R, C = spec.rows, spec.cols
    folds = ceil_div(geom.in_channels * geom.n_kij, R) * ceil_div(geom.out_channels, C)
    return folds * (2 * R + C + geom.n_positions - 2) - 1


def ideal_cycles(geom: ConvGeometry, spec: ArraySpec) -> int:
    """MACs / (R·C): every PE busy every cycle."""
    return ceil_div(geom.macs, spec.rows * spec.cols)
