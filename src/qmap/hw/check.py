"""Check one conv layer of the integer model on the array: export its files for one image, parse them back,
run the golden model on the parsed files and (when a simulator is installed) the RTL, and compare all three
with the integer model.

Inputs are plain integer tensors from :meth:`qmap.quant.integer.IntegerModel.run` (``x_int``, ``psum``) and
the layer's ``w_int``. The files follow the course testbench: ``out.txt`` = ReLU(Σ_kij psum), with no bias
(the core has no bias input); the layer's integer bias (accumulator units) is recorded in the manifest's
meta, and the requantizer adds it. So the comparison is with ReLU of the integer model's partial sums.

The array takes unsigned activations. A target layer whose input codes are signed (after GELU, h-swish, a
residual add without ReLU) is checked on offset codes x_u = x + 2^(b−1) ∈ [0, 2^b − 1] (:func:`offset_input`):
the host pads x_u with the same offset and the array runs with padding 0, so every tap sees it and
conv(x_u, W) = conv(x, W) + 2^(b−1)·ΣW_o at every position — a per-output-channel constant the host subtracts
(or the SFU's bias absorbs). The files then hold x_u, padding 0 and the offset partial sums; the manifest's
meta records the offset and the constants. (The whole-network view keeps signed-input layers on the host: their
offset partial sums need wider psums than the unsigned layers'.)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import HardwareError
from ..quant.chain import Flatten, MaxPool, ShiftCopy
from .export import assemble_output, export_conv, read_export
from .mapping import geometry_issue, map_conv
from .network import IntConvLayer, layer_tiling, run_network
from .rtl_network import RtlLayerRunner
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
    check_layer_width(x_int, w_int, spec, padding, stride, meta.get("layer"))
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


def offset_input(x_int: np.ndarray, w_int: np.ndarray, x_bits: int, padding: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Signed ``x_bits`` codes ``x_int[C, H, W]`` as the array's unsigned ones (module docstring):
    ``(x + 2^(b−1) padded with 2^(b−1) on every side, the per-output-channel constant 2^(b−1)·ΣW_o)``; run the
    array with padding 0."""
    off = 1 << (x_bits - 1)
    x_u = np.pad(x_int.astype(np.int64) + off, ((0, 0), (padding, padding), (padding, padding)), constant_values=off)
    return x_u, off * w_int.astype(np.int64).reshape(w_int.shape[0], -1).sum(1)


def check_layer_width(x_int: np.ndarray, w_int: np.ndarray, spec: ArraySpec, padding: int, stride: int,
                      name: str) -> None:
    """Raise :class:`HardwareError` naming layer ``name`` if its exported files (no bias) would not fit
    ``spec`` (weights, activations, psum width under ``overflow="error"``) — before any file is written."""
    if x_int.min() < 0:
        raise HardwareError(f"layer {name}: the array takes unsigned activations but this layer's input is signed "
                            f"(pick a layer after a ReLU)")
    try:
        simulate(map_conv(x_int, w_int, spec, padding, stride))
    except HardwareError as e:
        raise HardwareError(f"layer {name}: {e}") from None


def _psum_mismatches(fold_psums: np.ndarray, vec) -> int:
    """Golden per-fold psums ``[ot, it, k, p, c]`` vs the exported per-kij psum files at the folds' positions."""
    from .mapping import fold_input_indices

    idx = fold_input_indices(vec.mapped.geom)
    files = vec.psums[:, :, np.arange(vec.mapped.geom.n_kij)[:, None], idx, :]
    return int((fold_psums != files).sum())


def array_layers(imodel, x: torch.Tensor, every: bool = False) -> tuple[list, list[str], list[IntConvLayer], object]:
    """The integer model's conv layers that run on the array for image ``x`` (every conv whose input is
    unsigned, whose accumulator goes straight to its requantizer and whose geometry the mapping takes
    (:func:`~qmap.hw.mapping.geometry_issue`), from the first such one on; a signed first layer stays on the host;
    ``every``: each conv with unsigned input, the ops after its accumulator left to the host — for models whose
    layers are checked one by one): ``(chain, host layer names, IntConvLayer per array pass with its traced input
    and expected output, the model's run)``."""
    out = imodel.run(x, return_intermediates=True)
    traces = {t.name: t for t in out.layers}
    names = [lay.name for lay in imodel.layers]
    convs = [lay for lay in imodel.layers if lay.kind == "conv"]
    chain = [lay for lay in convs if int(traces[lay.name].x_int.min()) >= 0 and (every or not lay.pre_ops)
             and geometry_issue(lay.stride, lay.padding, lay.dilation) is None]
    if not chain:
        raise HardwareError("no conv layer with unsigned inputs to run on the array")
    start = names.index(chain[0].name)
    chain = [lay for lay in chain if names.index(lay.name) >= start]
    host = [lay.name for lay in convs if lay not in chain]
    layers = [part for lay in chain for part in _array_convs(lay, traces[lay.name])]
    return chain, host, layers, out


GROUP_SEP = "/g"  # a grouped conv's group k runs on the array as layer "<name>/g<k>"


def layer_passes(lay, x: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, slice]]:
    """The array passes of integer conv ``lay`` on its input codes ``x[C, H, W]``: ``(name, x, w, output
    channels)`` — the layer itself, or for ``groups`` > 1 one dense conv per group on its slice of input and output
    channels, named ``<layer>/g<k>``. The array has no grouped mode, so a depthwise layer runs its C/groups input
    channels per pass and fills that many array rows (its utilisation says so)."""
    w = lay.w_int.numpy()
    if lay.groups == 1:
        return [(lay.name, x, w, slice(None))]
    ci, co = x.shape[0] // lay.groups, w.shape[0] // lay.groups
    return [(f"{lay.name}{GROUP_SEP}{k}", x[k * ci:(k + 1) * ci], w[k * co:(k + 1) * co], slice(k * co, (k + 1) * co))
            for k in range(lay.groups)]


def _array_convs(lay, trace) -> list[IntConvLayer]:
    """The array passes of one integer conv (:func:`layer_passes`) with their biases and expected outputs."""
    b, acc = lay.bias_int.numpy(), np.maximum(trace.acc[0].numpy(), 0)
    common = dict(padding=lay.padding[0], stride=lay.stride[0],
                  pool_after=any(isinstance(op, MaxPool) for op in lay.post_ops))
    return [IntConvLayer(name, x, w, b[out], expected_out=acc[out], **common)
            for name, x, w, out in layer_passes(lay, trace.x_int[0].numpy())]


def merge_group_rows(rows: list[dict], spec: ArraySpec) -> list[dict]:
    """One row per layer: a grouped conv's per-group rows summed (cycles, MACs, mismatches, ...), psum bits the
    widest, utilisation recomputed over the array, ``groups`` the number of passes."""
    out: list[dict] = []
    for row in rows:
        name = row["name"].split(GROUP_SEP)[0]
        if out and GROUP_SEP in row["name"] and out[-1]["name"] == name:
            prev = out[-1]
            for key in ("macs", "cycles", "ideal_cycles", "no_overlap_cycles", "mismatches", "in_channels",
                        "out_channels", "rtl_cycles", "rtl_mismatches", "rtl_wall_s", "rtl_cpu_s", "sim_s"):
                if key in row and row[key] is not None:
                    prev[key] = (prev.get(key) or 0) + row[key]
            prev["psum_bits_needed"] = max(prev["psum_bits_needed"], row["psum_bits_needed"])
            prev["groups"] += 1
        else:
            out.append({**row, "name": name, "groups": 1})
    for row in out:
        row["utilisation"] = row["macs"] / (spec.rows * spec.cols * row["cycles"]) if row["cycles"] else 0.0
    return out


def chain_spec(chain: list, array: ArraySpec) -> ArraySpec:
    """The array for a chain: ``array`` with weight/activation widths the widest of the chained layers."""
    return replace(array, w_bits=max(lay.w_bits for lay in chain), a_bits=max(lay.x_bits for lay in chain))


def psum_widths(imodel, images: list[torch.Tensor], array: ArraySpec) -> list[dict]:
    """Per array layer: the psum bits its partial sums need (largest over ``images``, in ``array``'s dataflow)
    against ``array.psum_bits``. Under ``overflow="error"`` a layer that does not fit raises
    :class:`HardwareError` naming it, the bits it needs and the bits available (callers run this before
    writing any file)."""
    need: dict[str, int] = {}
    for x in images:
        try:
            _, chain, _, layers, _ = array_plan(imodel, x)
        except HardwareError:  # no conv the array can take (every input signed): no psums to size
            return []
        wide = replace(chain_spec(chain, array), psum_bits=48, overflow="error")
        rep = run_network([replace(layer, expected_out=None) for layer in layers], wide)
        for row in rep.layers:
            name = row["name"].split(GROUP_SEP)[0]
            need[name] = max(need.get(name, 0), row["psum_bits_needed"])
    rows = [{"layer": name, "bits_needed": bits, "bits_available": array.psum_bits,
             "fits": bits <= array.psum_bits} for name, bits in need.items()]
    bad = [r for r in rows if not r["fits"]]
    if bad and array.overflow == "error":
        raise HardwareError("partial sums overflow the array's psum_bits=" + str(array.psum_bits) + ": "
                            + "; ".join(f"layer {r['layer']} needs {r['bits_needed']} bits" for r in bad)
                            + " (widen hardware.array.psum_bits or set hardware.array.overflow: saturate)")
    return rows


def is_sequential(imodel) -> bool:
    """Whether the integer model is one path (each step reads the previous step's value only), so the array's
    outputs can be chained layer to layer and the logits rebuilt from them."""
    previous = imodel.input_name
    for st in imodel.steps:
        if list(st.inputs) != [previous]:
            return False
        previous = st.name
    return True


def _array_activation(lay) -> bool:
    """Whether the array's output of ``lay`` (ReLU of the accumulator), requantized, then OMR-copied,
    max-pooled and flattened, is the layer's integer output: a dense conv with its ReLU folded into the
    requantization and no other op after it (a GELU / h-swish table needs the negative accumulators the array's
    ReLU drops)."""
    return (lay.groups == 1 and lay.relu_in_clamp
            and all(isinstance(op, (MaxPool, ShiftCopy, Flatten)) for op in lay.post_ops))


def array_plan(imodel, x: torch.Tensor) -> tuple[bool, list, list[str], list[IntConvLayer], object]:
    """``(chained, *array_layers(...))``: chained when the model is one path (:func:`is_sequential`) and its
    array convs go straight to their requantizers without groups — the array's outputs then feed each other and
    rebuild the logits; otherwise every conv with unsigned input runs on its traced input (``every``). Raises
    :class:`HardwareError` when no conv input is unsigned."""
    if is_sequential(imodel):
        try:
            chain, host, layers, out = array_layers(imodel, x)
            names = [lay.name for lay in imodel.layers]  # a host conv between array layers breaks the chain
            gap = any(names.index(chain[0].name) < names.index(h) < names.index(chain[-1].name) for h in host)
            if not gap and all(lay.requant is not None for lay in chain[:-1]) \
                    and all(_array_activation(lay) for lay in chain):
                return True, chain, host, layers, out
        except HardwareError:  # no straight conv chain: the layers one by one may still run
            pass
    return False, *array_layers(imodel, x, every=True)


def network_view(imodel, x: torch.Tensor, array: ArraySpec, rtl_work_dir: Path | None = None,
                 rtl_simulator: str | None = None) -> dict:
    """Every array layer of the integer model (:func:`array_layers`) chained through the golden model on
    ``array`` (its shape, psum width and overflow policy; weight/activation widths per :func:`chain_spec`):
    values, cycles and utilisation per layer, and the integer logits compared with the integer model's.
    With ``rtl_work_dir`` every layer also runs on ONE build of the Verilog core (``rtl_simulator``, default
    Verilator if installed) and the RTL's outputs feed the chain. ``x`` is one normalised float image."""
    chained, chain, host, layers, out = array_plan(imodel, x)
    spec = chain_spec(chain, array)

    def requant(i: int, y: np.ndarray) -> np.ndarray:
        lay = chain[i]
        v = lay.requant(torch.from_numpy(y)[None], lower=0 if lay.relu_in_clamp else None)
        for op in lay.post_ops:  # OMR copies (commute with the 2x2 max-pool run_network applies after)
            if isinstance(op, ShiftCopy):
                v = op(v)
        return v[0].numpy()

    def head(x_last: np.ndarray) -> np.ndarray:
        step = next(st.name for st in imodel.steps if st.op is chain[-1])
        v = torch.from_numpy(x_last)[None]
        if any(isinstance(op, Flatten) for op in chain[-1].post_ops):  # run_network pools, the host flattens
            v = v.flatten(1)
        return imodel.run_after(step, v)[0].numpy()

    rtl = None
    if rtl_work_dir is not None:
        rtl = RtlLayerRunner(spec, [layer_tiling(layer, spec) for layer in layers], rtl_work_dir, rtl_simulator)
    t0, cpu0 = time.perf_counter(), time.process_time()
    if chained:
        rep = run_network(layers, spec, requant=requant, head=head, expected_logits=out.logits_int[0].numpy(),
                          rtl=rtl)
    else:  # residual adds, concats, gates: each array layer runs on its traced input, outputs checked per layer
        rep = run_network(layers, spec, rtl=rtl)
    keys = ("name", "in_channels", "out_channels", "hw", "macs", "cycles", "utilisation", "ideal_cycles",
            "no_overlap_cycles", "psum_bits_needed", "psum_bits", "mismatches", "rtl_cycles", "rtl_mismatches",
            "rtl_wall_s", "rtl_cpu_s", "groups")
    summary = rep.summary(spec)
    if rtl is not None:
        summary.update(rtl_simulator=rtl.simulator, rtl_build_s=rtl.build_s, rtl_builds=1,
                       rtl_build_reused=rtl.build_reused,
                       rtl_network_wall_s=time.perf_counter() - t0 + rtl.build_s,
                       host_cpu_s=time.process_time() - cpu0,
                       logits_integer=out.logits_int[0].tolist())
    return {"array": spec.to_dict(), "host_layers": host, "summary": summary,
            "layers": [{k: r[k] for k in keys if k in r} for r in merge_group_rows(rep.layers, spec)]}
