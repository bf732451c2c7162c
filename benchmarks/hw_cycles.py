"""Hardware figures: the 8x8 layer (golden vs RTL vs integer reference, cycles), whole VGG16 on an 8x8 array
(cycles and utilisation per layer, golden-model speed), RTL simulation speed per simulator.

    python benchmarks/hw_cycles.py [--verilator] [--repeats 3] [--run RUN_DIR]
    python benchmarks/hw_cycles.py --run RUN_DIR --only-run     # just the run's table -> hw_rtl_network.{json,md}

Writes benchmarks/results/hw_cycles.json and .md. ``--run`` adds the whole-network RTL table of a
``qmap run ... --set hardware.rtl_network=true`` folder (read from its results.json: per-layer RTL and golden
cycles, mismatches, RTL and integer logits, wall time), so the figure is the run's own.

Inputs are random in-range integer codes (cycle counts
depend only on shapes; values are checked against a plain integer conv). The integer model's images and the
integer-logit check are wired in through qmap.hw.network.run_network(requant=..., head=...).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from qmap.hw.export import export_conv, read_export
from qmap.hw.mapping import reference_conv
from qmap.hw.network import IntConvLayer, conv_shapes, random_int_layers, run_network
from qmap.hw.sim import run_cocotb, run_plain_tb, simulator_available
from qmap.hw.spec import ArraySpec
from qmap.hw.systolic import simulate
from qmap.models.registry import build_model
from qmap.report.results import markdown_table, median_of, write_result


def layer_8x8(work: Path, images: int, simulators: list[str]) -> list[dict]:
    rows = []
    spec = ArraySpec()
    for image in range(images):
        rng = np.random.default_rng(image)
        x, w = rng.integers(0, 16, (8, 4, 4)), rng.integers(-8, 8, (8, 8, 3, 3))
        folder = work / f"layer8x8_img{image}"
        export_conv(x, w, spec, folder, meta={"image_index": image, "source": "random codes"})
        vec = read_export(folder)
        golden = simulate(vec.mapped, "cycle")
        ref = np.maximum(reference_conv(x, w), 0).reshape(8, 16).T
        row = {"image": image, "golden_cycles": golden.cycles.total,
               "golden_vs_integer_mismatches": int(np.count_nonzero(golden.outputs[0] != ref))}
        for sim in simulators:
            r = run_cocotb(folder, sim, work / f"build_cocotb_{sim}")
            row[f"rtl_{sim}_cycles"] = r["cycles"]
            row[f"rtl_{sim}_mismatches"] = r["psum_mismatches"] + r["output_mismatches"]
        rows.append(row)
    return rows


def rtl_speed(work: Path, simulators: list[str]) -> list[dict]:
    """cycles/s of each simulator: cocotb on the 8x8 layer, plain TB on a 64->64 8x8-map layer (36,9xx cycles)."""
    rows = []
    rng = np.random.default_rng(7)
    big = work / "speed_64x64"
    export_conv(rng.integers(0, 16, (64, 8, 8)), rng.integers(-8, 8, (64, 64, 3, 3)), ArraySpec(), big)
    for sim in simulators:
        r = run_cocotb(work / "layer8x8_img0", sim, work / f"build_cocotb_{sim}")
        rows.append({"simulator": sim, "runner": "cocotb (Python clock)", "cycles": r["cycles"],
                     "cycles_per_s": r["cycles_per_s"], "mismatches": r["psum_mismatches"] + r["output_mismatches"]})
        r = run_plain_tb(big, sim, work / f"build_tb_{sim}")
        rows.append({"simulator": sim, "runner": "plain Verilog TB (incl. file loading)", "cycles": r["cycles"],
                     "cycles_per_s": r["cycles_per_s"], "mismatches": r["psum_mismatches"] + r["output_mismatches"]})
    return rows


def whole_vgg16(repeats: int) -> tuple[dict, list[dict]]:
    spec = ArraySpec(psum_bits=24)  # 4b x 4b over 512*9 inputs needs 21 bits; 24 declared
    layers = random_int_layers(conv_shapes(build_model("vgg16_bn")), spec, seed=0)
    checked = [IntConvLayer(**{**l.__dict__, "expected_out": np.maximum(reference_conv(l.x_int, l.w_int), 0)})
               for l in layers]
    times, report = [], None
    for _ in range(repeats):
        report = run_network(checked, spec)
        times.append(report.wall_s)
    summary = report.summary(spec)
    summary["sim_time_s"] = median_of(times)
    summary["simulated_macs_per_s"] = summary["macs"] / summary["sim_time_s"]["median"]
    return summary, report.layers


def rtl_network_section(run_dir: Path) -> tuple[dict, str]:
    """The whole-network RTL figures of a qmap run folder (results.json → hardware.network[_summary])."""
    res = json.loads((run_dir / "results.json").read_text())
    hw = res["hardware"]
    sm, layers = hw["network_summary"], hw["network"]
    if "rtl_cycles" not in sm:
        raise SystemExit(f"{run_dir}: the run has no whole-network RTL result (hardware.rtl_network=true)")
    cols = ["name", "in_channels", "out_channels", "hw", "cycles", "rtl_cycles", "rtl_mismatches", "mismatches",
            "psum_bits_needed", "psum_bits", "rtl_wall_s", "rtl_cpu_s"]
    md = (f"\n## The whole network on the RTL (one build, {sm['rtl_simulator']}), image {sm['image']}\n\n"
          f"From `{res.get('provenance', {}).get('command', 'qmap run')}` ({run_dir.name}/results.json). "
          f"{sm['rtl_layers']} array layers (host: {', '.join(sm['host_layers']) or 'none'}), "
          f"{sm['rtl_cycles']:,} RTL cycles, RTL = golden cycles on every layer: {sm['rtl_cycles_equal_golden']}; "
          f"RTL vs golden value mismatches {sm['rtl_mismatches']}; integer-model mismatches {sm['mismatches']}; "
          f"RTL logits = integer model's logits: {sm['logits_match']}. Wall time {sm['rtl_network_wall_s']:.1f} s "
          f"(build {sm['rtl_build_s']:.1f} s{', reused from the cache' if sm.get('rtl_build_reused') else ''}; "
          f"layer runs {sm['rtl_wall_s']:.1f} s wall, {sm.get('rtl_cpu_s', float('nan')):.1f} s CPU of the "
          f"simulator; host {sm.get('host_cpu_s', float('nan')):.1f} s CPU for the golden model, files and "
          f"requantization).\n\n"
          f"RTL logits: {sm['logits']}  \nInteger logits: {sm['logits_integer']}\n\n"
          + markdown_table(layers, [c for c in cols if c in layers[0]]))
    return {"run": str(run_dir), "summary": sm, "layers": layers}, md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--verilator", action="store_true", help="also build and run under Verilator (slow build)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--run", type=Path, help="a qmap run folder made with hardware.rtl_network=true")
    ap.add_argument("--only-run", action="store_true", help="write only the --run table (hw_rtl_network)")
    args = ap.parse_args()
    rtl_net = rtl_network_section(args.run) if args.run else None
    if args.only_run:
        if rtl_net is None:
            raise SystemExit("--only-run needs --run RUN_DIR")
        write_result("hw_rtl_network", rtl_net[0], rtl_net[1])
        print(rtl_net[1])
        return
    sims = [s for s in (["icarus"] + (["verilator"] if args.verilator else [])) if simulator_available(s)]
    work = Path(tempfile.mkdtemp(prefix="qmap_hw_bench_"))
    t0 = time.perf_counter()
    try:
        l8 = layer_8x8(work, args.images, sims)
        speed = rtl_speed(work, sims)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    vgg, per_layer = whole_vgg16(args.repeats)
    data = {"layer_8x8": l8, "rtl_speed": speed, "vgg16_8x8": vgg, "vgg16_layers": per_layer,
            "references": {"ideal_cycles": 4893696, "no_overlap_cycles": 9955635, "goal_cycles": 5_500_000},
            "rtl_network": rtl_net[0] if rtl_net else None, "bench_wall_s": time.perf_counter() - t0}
    vgg_cols = ["name", "in_channels", "out_channels", "hw", "folds", "cycles", "utilisation", "ideal_cycles",
                "no_overlap_cycles", "mismatches", "sim_s"]
    md = ("## 8-in/8-out layer (4x4 map) on the 8x8 array, W4A4\n\n" + markdown_table(l8) +
          "\nAnalytic references: 341 cycles without weight-preload overlap (SCALE-Sim WS); goal <= 200.\n\n"
          "## RTL simulation speed\n\n" + markdown_table(speed) +
          f"\n## VGG16 (13 conv layers, CIFAR-10) on 8x8\n\nTotal {vgg['cycles']:,} cycles "
          f"(ideal {vgg['ideal_cycles']:,}, no-overlap {vgg['no_overlap_cycles']:,}), utilisation "
          f"{vgg['utilisation']:.1%}, value mismatches {vgg['mismatches']}; golden model "
          f"{vgg['sim_time_s']['median']:.2f} s median of {args.repeats} "
          f"({vgg['simulated_macs_per_s'] / 1e6:.0f} M simulated MACs/s).\n\n" + markdown_table(per_layer, vgg_cols)
          + (rtl_net[1] if rtl_net else ""))
    write_result("hw_cycles", data, md)
    print(md)


if __name__ == "__main__":
    main()
