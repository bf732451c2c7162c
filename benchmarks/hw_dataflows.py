"""Weight- vs output-stationary on the reference network: RTL = golden per layer, traffic and energy, SCALE-Sim.

    python benchmarks/hw_dataflows.py [--data DIR] [--image 0] [--buffer-kib 64] [--scalesim PYTHON]

The reference checkpoint (vgg16_bn_sq8, width 0.5) quantized RTN W4A4 (per-tensor narrow weights, MSE
observers, first/last layer 8-bit: the seed configuration's settings without α) → integer model → every
array layer of one test image chained through the golden model AND the Verilog core (one cached build runs
both dataflows), for WS and for OS: per layer golden cycles, RTL cycles, RTL-vs-golden value mismatches, and
whether the RTL-fed logits equal the integer model's. Then per layer the SRAM/DRAM traffic and energy of
both dataflows (:mod:`qmap.hw.traffic`, Horowitz ISSCC 2014 45 nm figures) and, with ``--scalesim PYTHON``
(an interpreter with the ``scalesim`` package; 3.0.0 needs numpy < 2), SCALE-Sim's cycle counts for the same
layers (its ``ws`` and ``os`` dataflows, the same array, a conv topology of the padded maps). Writes
benchmarks/results/hw_dataflows.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from qmap.data import calibration_set, load_cifar10, resolve_data_root, to_tensor
from qmap.hw.check import array_layers, chain_spec, network_view
from qmap.hw.network import layer_tiling
from qmap.hw.spec import ArraySpec
from qmap.hw.traffic import HOROWITZ_45NM_PJ, layer_traffic
from qmap.models import load_model
from qmap.quant import QuantConfig, calibrate, quantize_model
from qmap.quant.integer import to_integer_model
from qmap.report.results import markdown_table, write_result

CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"
SCALESIM_CFG = """[general]
run_name = qmap_{df}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:    {kib}
FilterSramSzkB:   {kib}
OfmapSramSzkB:    {kib}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : {df}
Bandwidth : 10
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
FilterCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""
# SCALE-Sim 3.0 insists on a layout file even with custom layouts off: one placeholder row per layer
LAYOUT_HEADER = "Layer name" + ",x" * 19 + ",\n"
LAYOUT_ROW = ",1,1,1,1,1,1,0,1,2,0,1,2,0,1,2,3,0,1,2,3,\n"


def scalesim_cycles(python: str, layers: list, spec: ArraySpec, kib: int, work: Path) -> dict[str, list[int]]:
    """SCALE-Sim's total cycles per layer for its 'ws' and 'os' dataflows (conv topology: SCALE-Sim lowers
    each conv to a GEMM itself)."""
    topo, layout = work / "topology.csv", work / "layout.csv"
    layout.write_text(LAYOUT_HEADER + "".join(layer.name + LAYOUT_ROW for layer in layers))
    with topo.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels",
                     "Num Filter", "Strides", ""])
        for layer in layers:
            g = layer_tiling(layer, spec)[0]
            wr.writerow([layer.name, g.padded_h, g.padded_w, g.kh, g.kw, g.in_channels, g.out_channels, g.stride,
                         ""])
    out = {}
    for df in ("ws", "os"):
        cfg = work / f"scale_{df}.cfg"
        cfg.write_text(SCALESIM_CFG.format(df=df, rows=spec.rows, cols=spec.cols, kib=kib))
        logs = work / f"logs_{df}"
        proc = subprocess.run([python, "-m", "scalesim.scale", "-c", str(cfg), "-t", str(topo), "-l", str(layout),
                               "-p", str(logs), "-i", "conv", "-s", "N"], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"SCALE-Sim ({df}) failed: {(proc.stdout + proc.stderr)[-1500:]}")
        report = next(logs.rglob("COMPUTE_REPORT.csv"))
        with report.open() as fh:
            rows = list(csv.DictReader(fh, skipinitialspace=True))
        key = next(k for k in rows[0] if k.strip() == "Total Cycles")  # not "... (incl. prefetch)"
        out[df] = [int(float(r[key])) for r in rows]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--image", type=int, default=0)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--buffer-kib", type=int, default=64)
    p.add_argument("--scalesim", default=None, help="python interpreter that has the scalesim package")
    p.add_argument("--no-rtl", action="store_true", help="golden model only (no Verilog runs)")
    args = p.parse_args(argv)
    root = resolve_data_root(args.data)
    t0 = time.perf_counter()
    model, manifest = load_model(str(root / CHECKPOINT))
    mean, std = manifest.mean_std()
    calib = to_tensor(calibration_set(load_cifar10(root, "train"), n=args.calib).images, mean, std)
    qmodel = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, w_per_channel=False, w_narrow=True,
                                               w_observer="mse", a_observer="mse", first_last_bits=8))
    calibrate(qmodel, calib)
    imodel = to_integer_model(qmodel)
    test = load_cifar10(root, "test")
    x = to_tensor(test.images[args.image: args.image + 1], mean, std)
    work = Path(tempfile.mkdtemp(prefix="qmap_dataflows_"))
    views, rows = {}, []
    for df in ("ws", "os"):
        views[df] = network_view(imodel, x, ArraySpec(psum_bits=16, dataflow=df),
                                 rtl_work_dir=None if args.no_rtl else work / df)
    chain, _, layers, _ = array_layers(imodel, x)
    spec = chain_spec(chain, ArraySpec(psum_bits=16))
    for i, layer in enumerate(layers):
        g = layer_tiling(layer, spec)[0]
        row = {"name": layer.name, "cin": g.in_channels, "cout": g.out_channels, "hw": f"{g.height}x{g.width}"}
        for df in ("ws", "os"):
            v = views[df]["layers"][i]
            tr = layer_traffic(g, replace(spec, dataflow=df), args.buffer_kib * 1024)
            e = tr.energy_pj()
            row.update({f"{df}_golden_cycles": v["cycles"], f"{df}_rtl_cycles": v.get("rtl_cycles"),
                        f"{df}_rtl_mismatches": v.get("rtl_mismatches"), f"{df}_sram_kbit": tr.sram_bits / 1000,
                        f"{df}_dram_kbit": tr.dram_bits / 1000, f"{df}_energy_uj": e["total"] / 1e6,
                        f"{df}_energy_split": f"mac {e['mac'] / e['total']:.0%}, sram {e['sram'] / e['total']:.0%}, "
                                              f"dram {e['dram'] / e['total']:.0%}",
                        f"{df}_traffic": tr.to_dict()})
        rows.append(row)
    scalesim = None
    if args.scalesim:
        try:
            scalesim = scalesim_cycles(args.scalesim, layers, spec, args.buffer_kib, work)
            for row, ws, os_ in zip(rows, scalesim["ws"], scalesim["os"], strict=True):
                row.update(scalesim_ws_cycles=ws, scalesim_os_cycles=os_)
        except (RuntimeError, OSError, StopIteration, KeyError, subprocess.TimeoutExpired) as e:
            scalesim = {"error": str(e)}
    summaries = {df: views[df]["summary"] for df in views}
    data = {"array": spec.to_dict(), "image": args.image, "buffer_kib": args.buffer_kib,
            "energy_table_pj": HOROWITZ_45NM_PJ, "layers": rows, "summaries": summaries, "scalesim": scalesim,
            "wall_s": time.perf_counter() - t0}
    cols = ["name", "cin", "cout", "hw", "ws_golden_cycles", "ws_rtl_cycles", "ws_rtl_mismatches",
            "os_golden_cycles", "os_rtl_cycles", "os_rtl_mismatches"]
    if scalesim and "ws" in scalesim:
        cols += ["scalesim_ws_cycles", "scalesim_os_cycles"]
    energy_cols = ["name", "ws_sram_kbit", "ws_dram_kbit", "ws_energy_uj", "ws_energy_split", "os_sram_kbit",
                   "os_dram_kbit", "os_energy_uj", "os_energy_split"]
    total = {df: sum(r[f"{df}_energy_uj"] for r in rows) for df in ("ws", "os")}
    if args.no_rtl:
        cols = [c for c in cols if "rtl" not in c]
    md = (f"## Reference network (vgg16_bn_sq8 w0.5, RTN W4A4), image {args.image}, 8x8 array, one RTL build\n\n"
          + ("Golden model only (--no-rtl): " + ", ".join(f"{df.upper()} {s['cycles']:,} cycles, logits = integer "
                                                         f"model's: {s['logits_match']}" for df, s in summaries.items())
             + "\n" if args.no_rtl else "")
          + "".join(f"- {df.upper()}: {s['rtl_layers']} layers, golden {s['cycles']:,} cycles, RTL "
                    f"{s['rtl_cycles']:,} (equal on every layer: {s['rtl_cycles_equal_golden']}), RTL vs golden "
                    f"mismatches {s['rtl_mismatches']}, RTL-fed logits = integer model's: {s['logits_match']}, "
                    f"{s['rtl_simulator']} (build reused: {s['rtl_build_reused']}, {s['rtl_build_s']:.0f} s), "
                    f"layer runs {s['rtl_wall_s']:.1f} s wall / {s['rtl_cpu_s']:.1f} s CPU\n"
                    for df, s in summaries.items() if "rtl_layers" in s)
          + "\n" + markdown_table(rows, cols)
          + (f"\nSCALE-Sim: {scalesim['error']}\n" if scalesim and "error" in scalesim else "")
          + f"\n## Traffic and energy per layer ({args.buffer_kib} KiB buffer, Horowitz ISSCC 2014 45 nm)\n\n"
          + f"Totals: WS {total['ws']:.1f} uJ, OS {total['os']:.1f} uJ.\n\n" + markdown_table(rows, energy_cols))
    write_result("hw_dataflows", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
