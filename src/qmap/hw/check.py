"""Check one conv layer of the integer model on the array: export its files for one image, parse them back,
run the golden model on the parsed files and (when a simulator is installed) the RTL, and compare all three
with the integer model.

Inputs are plain integer tensors from :meth:`qmap.quant.integer.IntegerModel.run` (``x_int``, ``psum``) and
the layer's ``w_int``. The files follow the course testbench: ``out.txt`` = ReLU(Σ_kij psum), with no bias
(the core has no bias input); the layer's integer bias (accumulator units) is recorded in the manifest's
meta, and the requantizer adds it. So the comparison is with ReLU of the integer model's partial sums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import HardwareError
from .export import assemble_output, export_conv, read_export
from .sim import run_cocotb, simulator_available
from .spec import ArraySpec
from .systolic import simulate

RTL_CHOICES = ("auto", "icarus", "verilator", "none")


def rtl_simulators(choice: str) -> list[str]:
    """Simulators to run for a config value: ``auto`` = Icarus when installed; ``none`` = no RTL."""
    if choice not in RTL_CHOICES:
        raise HardwareError(f"unknown rtl choice {choice!r}; known: {', '.join(RTL_CHOICES)}")
    if choice == "none":
        return []
    if choice == "auto":
        return ["icarus"] if simulator_available("icarus") else []
    return [choice]


def check_layer(x_int: np.ndarray, w_int: np.ndarray, psum: np.ndarray, spec: ArraySpec,
                folder: Path, *, padding: int, stride: int, meta: dict, simulators: list[str],
                build_root: Path) -> dict:
    """Export → parse → golden model (→ RTL); every comparison counted in integers. Returns a result row."""
    if x_int.min() < 0:
        raise HardwareError(f"layer {meta.get('layer')}: the array takes unsigned activations but this layer's "
                            f"input is signed (pick a layer after a ReLU)")
    expected = np.maximum(psum, 0)
    export_conv(x_int, w_int, spec, folder, padding=padding, stride=stride, meta=meta)
    vec = read_export(folder)
    file_out = assemble_output(vec.outputs, vec.mapped.geom)
    sim = simulate(vec.mapped)
    golden_out = assemble_output(sim.outputs, vec.mapped.geom)
    row = {"layer": meta.get("layer"), "image": meta.get("image_index"), "folder": str(folder),
           "files_vs_integer_mismatches": int((file_out != expected).sum()),
           "golden_vs_files_psum_mismatches": int(_psum_mismatches(sim.fold_psums, vec)),
           "golden_vs_integer_mismatches": int((golden_out != expected).sum()),
           "golden_cycles": sim.cycles.total, "utilisation": sim.cycles.utilisation, "macs": sim.cycles.macs}
    for s in simulators:
        r = run_cocotb(folder, s, build_dir=build_root / f"{folder.name}_{s}")
        row[f"rtl_{s}_output_mismatches"] = r.get("output_mismatches")
        row[f"rtl_{s}_psum_mismatches"] = r.get("psum_mismatches")
        row[f"rtl_{s}_cycles"] = r.get("cycles")
        row[f"rtl_{s}_cycles_equal_golden"] = r.get("cycles") == sim.cycles.total
    return row


def _psum_mismatches(fold_psums: np.ndarray, vec) -> int:
    """Golden per-fold psums ``[ot, it, k, p, c]`` vs the exported per-kij psum files at the folds' positions."""
    from .mapping import fold_input_indices

    idx = fold_input_indices(vec.mapped.geom)
    files = vec.psums[:, :, np.arange(vec.mapped.geom.n_kij)[:, None], idx, :]
    return int((fold_psums != files).sum())
