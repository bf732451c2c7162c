"""Every array layer on the Verilog core, with ONE build of it (weight- or output-stationary per layer).

:class:`RtlLayerRunner` compiles the plain testbench ``rtl/qmap_tb.v`` (Verilator ``--binary`` when
installed, else Icarus) once, with memory depths that fit the largest of the layers it will be given; the
layer's geometry (fold count, N, kij schedule, tiles, saturation) is runtime configuration that the testbench
reads from each folder's ``qmap_layer.txt``. Calling the runner on a tiled conv writes the files the core reads
(activations, weights, bias; :func:`qmap.hw.export.export_mapped` with ``reference=False``), runs the built
testbench on them and reads back the core's output memory and its cycle count.
:func:`qmap.hw.network.run_network` passes each layer through it and chains the RTL's outputs (the host
requantizes and pools in between), so the network's logits come from the RTL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import HardwareError
from .export import export_mapped
from .formats import read_vectors
from .mapping import ConvGeometry, MappedConv
from .sim import cached_plain_tb, core_parameters, run_built_tb, simulator_available
from .spec import ArraySpec


def fastest_simulator() -> str:
    """Verilator when installed (its --binary build runs the network in minutes), else Icarus."""
    for sim in ("verilator", "icarus"):
        if simulator_available(sim):
            return sim
    raise HardwareError("no Verilog simulator installed (apt-get install verilator or iverilog)")


class RtlLayerRunner:
    """One build of qmap_core for layers of the given ``(geometry, itiles, otiles)``; call it per layer. The
    build is kept in :func:`qmap.hw.sim.rtl_cache_dir` and reused by a later run with the same parameters and
    sources (``build_reused``)."""

    def __init__(self, spec: ArraySpec, layers: Sequence[tuple[ConvGeometry, int, int]], work_dir: str | Path,
                 simulator: str | None = None):
        self.spec, self.work = spec, Path(work_dir)
        self.simulator = simulator or fastest_simulator()
        t0 = time.perf_counter()
        self.params = core_parameters(spec, list(layers))
        self.cmd, self.build_reused = cached_plain_tb(self.params, self.simulator)
        self.build_s = time.perf_counter() - t0

    def __call__(self, mapped: MappedConv, name: str) -> tuple[np.ndarray, dict]:
        """Run one tiled layer; returns the core's ``outputs[ot, p, c]`` (ReLU(bias + conv)) and the
        testbench's result (cycles, wall time, format errors)."""
        # the dataflow and the saturation are runtime configuration of the one build
        if replace(mapped.spec, overflow=self.spec.overflow, dataflow=self.spec.dataflow) != self.spec:
            raise HardwareError(f"{name}: array {mapped.spec} differs from the built core's {self.spec}")
        folder = self.work / "layers" / name
        export_mapped(mapped, folder, has_bias=True, reference=False, meta={"layer": name})
        result = run_built_tb(self.cmd, folder, folder / "rtl_out.txt")
        if not result["done"] or result["format_errors"]:
            raise HardwareError(f"{name}: the RTL run failed ({result}); see {folder}")
        g, C = mapped.geom, self.spec.cols
        out = read_vectors(folder / "rtl_out.txt", C, self.spec.psum_bits, True,
                           n_lines=mapped.n_otiles * g.n_positions, headered=False)
        return out.reshape(mapped.n_otiles, g.n_positions, C), {"simulator": self.simulator, **result}
