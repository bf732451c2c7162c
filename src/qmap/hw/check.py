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
import torch

from ..errors import HardwareError
from ..quant.chain import MaxPool, ShiftCopy
from .export import assemble_output, export_conv, read_export
from .network import IntConvLayer, run_network
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


def network_view(imodel, x: torch.Tensor, rows: int, cols: int, psum_bits: int = 32) -> dict:
    """Every conv layer of the integer model whose input is unsigned (all but a signed first layer, which stays
    on the host), chained through the golden model on an R×C array: values, cycles and utilisation per layer,
    and the integer logits, compared with the integer model's. Weight/activation widths are the widest of the
    chained layers. ``x`` is one normalised float image [1, C, H, W]."""
    out = imodel.run(x, return_intermediates=True)
    traces = {t.name: t for t in out.layers}
    names = [lay.name for lay in imodel.layers]
    convs = [lay for lay in imodel.layers if lay.kind == "conv"]
    chain = [lay for lay in convs if int(traces[lay.name].x_int.min()) >= 0 and not lay.pre_ops]
    if not chain:
        raise HardwareError("no conv layer with unsigned inputs to run on the array")
    start = names.index(chain[0].name)
    chain = [lay for lay in chain if names.index(lay.name) >= start]
    host = [lay.name for lay in convs if lay not in chain]
    spec = ArraySpec(rows, cols, w_bits=max(lay.w_bits for lay in chain), a_bits=max(lay.x_bits for lay in chain),
                     psum_bits=psum_bits)
    layers = [IntConvLayer(lay.name, traces[lay.name].x_int[0].numpy(), lay.w_int.numpy(), lay.bias_int.numpy(),
                           padding=lay.padding[0], stride=lay.stride[0],
                           pool_after=any(isinstance(op, MaxPool) for op in lay.post_ops),
                           expected_out=np.maximum(traces[lay.name].acc[0].numpy(), 0)) for lay in chain]

    def requant(i: int, y: np.ndarray) -> np.ndarray:
        lay = chain[i]
        v = lay.requant(torch.from_numpy(y)[None], lower=0 if lay.relu_in_clamp else None)
        for op in lay.post_ops:  # OMR copies (commute with the 2x2 max-pool run_network applies after)
            if isinstance(op, ShiftCopy):
                v = op(v)
        return v[0].numpy()

    def head(x_last: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(x_last)[None]
        for lay in imodel.layers[names.index(chain[-1].name) + 1:]:
            v = imodel.run_layer(lay, v.flatten(1) if lay.kind == "linear" else v).y_int
        return v[0].numpy()

    rep = run_network(layers, spec, requant=requant, head=head, expected_logits=out.logits_int[0].numpy())
    return {"array": spec.to_dict(), "host_layers": host, "summary": rep.summary(spec),
            "layers": [{k: r[k] for k in ("name", "in_channels", "out_channels", "hw", "macs", "cycles",
                                          "utilisation", "ideal_cycles", "no_overlap_cycles", "mismatches")}
                       for r in rep.layers]}
