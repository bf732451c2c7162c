"""Model zoo: the trained ResNet-20, MobileNet-style and GELU CNN checkpoints (``checkpoints/``) through qmap.

Per model:

1. FP top-1 on the 10k test split and on the genuine 1,017-image subset.
2. The PTQ table — RTN, AdaRound, BRECQ, QDrop, DOMR without and with OMR at W4A4, W3A3, W2A4, W4A2 — read
   from the ``qmap sweep`` of ``configs/sweeps/model_zoo.yaml`` (run here first, resumable: complete points are
   skipped), with each point's quantization time, whole-run wall time and peak RSS.
3. OMR on GELU / h-swish inputs (seed section 4), for models with such activations: RTN W4A{2,3,4} without OMR,
   with full OMR and with selective OMR (25 % of each pair's channels) on the full test split, the extra
   channels and MACs, OMR's exactness in float64 against the same-step quantizer with twice the upper clip, and
   the levels over a real layer's input histogram (``model_zoo_plots/omr_levels_<model>.png``).
4. The integer-only model against the fake-quant model (RTN W4A4): arg-max agreement and top-1 on the full test
   split, per-layer code mismatches on ``--agreement-images``; the whole-network view on the 8x8 array (cycles,
   utilisation per layer; depthwise layers run one pass per group).

    QMAP_DATA=../shared/data python benchmarks/model_zoo.py [--models resnet20,gelu_cnn] [--no-sweep]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from pathlib import Path

import torch
from rtn_table import integer_row  # benchmarks/ is sys.path[0] when run as a script
from torch import nn

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.evaluate import evaluate
from qmap.hw.check import network_view
from qmap.hw.spec import ArraySpec
from qmap.io import atomic_write_json
from qmap.methods import get_method
from qmap.methods.channels import consumer_inputs
from qmap.methods.omr import apply_omr, float_mode, omr_reference
from qmap.models import load_model
from qmap.quant import QuantConfig, to_integer_model
from qmap.report.plots_outliers import plot_outlier_levels
from qmap.report.results import markdown_table, write_result
from qmap.sweep.execute import plan, run_sweep
from qmap.sweep.report import point_row
from qmap.sweep.spec import load_sweep

MODELS = ("resnet20", "mobilenet_cifar", "gelu_cnn")
CURVED = {nn.GELU: "GELU", nn.Hardswish: "h-swish"}
PLOT_LAYER = {"gelu_cnn": "stages.1.3", "mobilenet_cifar": "blocks.3.depthwise.0"}  # a curved activation's consumer
OMR_BUDGET = 0.25


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder with <model>.safetensors + .json")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sweep", default="configs/sweeps/model_zoo.yaml")
    p.add_argument("--sweep-out", default="runs/sweeps/model_zoo")
    p.add_argument("--no-sweep", action="store_true", help="read the sweep folder as it is (run nothing)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the sweep's local Ray instance (default: all)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=LEVEL[,LEVEL...]",
                   help="run only these levels of a sweep axis (bits, method); the table shows what is complete")
    p.add_argument("--calib", type=int, default=1024, help="calibration images (class-balanced, seeded)")
    p.add_argument("--agreement-images", type=int, default=64)
    p.add_argument("--omr-bits", default="2,3,4", help="activation widths of the OMR study")
    p.add_argument("--note", action="append", default=[], help="a line for the results file (e.g. what changed "
                   "between the sweep's points and this invocation)")
    p.add_argument("--keep", action="store_true", help="start from the results file already in --out: keep its "
                   "models not named in --models, and its complete PTQ rows where this sweep folder has none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if not args.data:
        p.error("set QMAP_DATA or pass --data")
    return args


def top1(model, data, mean, std) -> float:
    return 100 * evaluate(model, data, mean, std, device="cpu", progress=False)["top1"]


def rtn(model, calib, w_bits, a_bits):
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, w_observer="mse", a_observer="mse", first_last_bits=8)
    return get_method("rtn")(model, calib, cfg).model


def ptq_rows(points: list[dict], name: str) -> list[dict]:
    keys = ("bits", "method", "status", "top1_quantized", "top1_integer", "quantize_s", "wall_s", "peak_rss_mb",
            "array_cycles", "test_images", "error")
    # the point name <model>-<bits>-<method label> tells DOMR with and without OMR apart (both run "domr")
    return [{k: p.get(k) for k in keys} | {"method": p["point"].split("-", 2)[2]}
            for p in points if p["point"].startswith(f"{name}-")]


def array_view(qmodel, x) -> dict:
    """Whole-network view of one image on the 8x8 array (32-bit psums: ResNet-20's adds need 19 bits)."""
    view = network_view(to_integer_model(qmodel), x[:1], ArraySpec(8, 8, psum_bits=32))
    keys = ("name", "in_channels", "out_channels", "groups", "macs", "cycles", "ideal_cycles", "utilisation",
            "mismatches")
    return {"summary": {k: view["summary"].get(k) for k in ("layers", "macs", "cycles", "utilisation", "mismatches")},
            "host_layers": view["host_layers"], "layers": [{k: r.get(k) for k in keys} for r in view["layers"]]}


def omr_equivalence(qmodel, calib, x) -> dict:
    """Full OMR in float64 against the same-step quantizers with twice the upper clip (the claim of OMR)."""
    q = copy.deepcopy(qmodel).double()
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, calib=calib.double())
    with torch.no_grad():
        out, want, base = q(x.double()), omr_reference(plain, report)(x.double()), plain(x.double())
    return {"images": len(x), "max_abs_diff_omr_vs_wide": float((out - want).abs().max()),
            "max_abs_diff_plain_vs_wide": float((base - want).abs().max())}


def omr_plot(qmodel, calib, layer: str, bits: int, path: Path) -> dict:
    """Histogram of ``layer``'s FP input on the calibration images with the plain and OMR levels."""
    with float_mode(qmodel):
        values = torch.cat([b[layer].flatten() for b in consumer_inputs(qmodel, [layer], calib)]).cpu().numpy()
    q = qmodel.get_submodule(layer).input_quantizer
    step, z = float(q.scale.reshape(())), int(q.zero_point.reshape(()))
    codes = (q.spec.qmin - z, q.spec.qmax - z)
    plot_outlier_levels(values, step, bits, None, path, title=f"input of {layer}, {bits}-bit activations",
                        codes=codes)
    clip = step * codes[1]
    return {"layer": layer, "a_bits": bits, "step": step, "codes": list(codes), "clip": clip,
            "max": float(values.max()), "min": float(values.min()),
            "fraction_above_clip": float((values > clip).mean()),
            "fraction_above_omr_clip": float((values > 2 * clip).mean()), "plot": path.name}


def omr_study(name, model, calib, test, mean, std, equiv_x, bits_list, plot_dir: Path) -> dict:
    kinds = sorted({label for m in model.modules() for t, label in CURVED.items() if isinstance(m, t)})
    rows, equiv = [], []
    for a in bits_list:
        base = rtn(model, calib, 4, a)
        rows.append({"setting": f"W4A{a}", "variant": "RTN", "top1": top1(base, test, mean, std),
                     "extra_channels": 0, "extra_macs_%": 0.0})
        for selective in (False, True):
            q = copy.deepcopy(base)
            rep = apply_omr(q, selective=selective, budget=OMR_BUDGET, calib=calib)
            rows.append({"setting": f"W4A{a}", "variant": f"RTN+OMR selective {OMR_BUDGET:g}" if selective else
                         "RTN+OMR full", "top1": top1(q, test, mean, std), "extra_channels": rep["extra_channels"],
                         "extra_macs_%": 100 * rep["fraction"],
                         "pairs": [{k: r[k] for k in ("producer", "consumer", "form", "channels", "extra_channels")}
                                   for r in rep["pairs"]], "skipped": len(rep["skipped"])})
        equiv.append({"setting": f"W4A{a}", **omr_equivalence(base, calib[:128], equiv_x)})
        print(name, rows[-3:], equiv[-1], flush=True)
    plot_bits = min(bits_list)
    figure = omr_plot(rtn(model, calib, 4, plot_bits), calib[:256], PLOT_LAYER[name], plot_bits,
                      plot_dir / f"omr_levels_{name}.png")
    return {"activations": kinds, "rows": rows, "equivalence": equiv, "figure": figure}


def run_model(name: str, args, calib_source, test, exact, sweep_points, plot_dir) -> dict:
    model, manifest = load_model(Path(args.checkpoints) / f"{name}.safetensors")
    mean, std = manifest.mean_std()
    calib = to_tensor(calib_source.images, mean, std)
    agree_x = to_tensor(test.images[:args.agreement_images], mean, std)
    fp = {"test_top1": top1(model, test, mean, std), "test_exact_top1": top1(model, exact, mean, std)}
    print(name, "FP", fp, flush=True)
    q = rtn(model, calib, 4, 4)
    fq = top1(q, test, mean, std)
    integer = integer_row(q, test, mean, std, agree_x, fq)
    integer.pop("accumulators")
    print(name, "integer", {k: v for k, v in integer.items() if k != "per_layer"}, flush=True)
    hw = array_view(q, agree_x)
    print(name, "array", hw["summary"], flush=True)
    out = {"arch": manifest.arch, "manifest_test_top1": 100 * manifest.extra.get("test_top1", float("nan")),
           "train": {k: manifest.extra.get("train", {}).get(k)
                     for k in ("epochs", "command", "wall_seconds_all_epochs")},
           "fp": fp, "ptq": ptq_rows(sweep_points, name), "integer_w4a4_rtn": integer, "array_8x8": hw}
    if any(isinstance(m, tuple(CURVED)) for m in model.modules()):
        equiv_x = to_tensor(exact.images[:64], mean, std)
        out["omr"] = omr_study(name, model, calib, test, mean, std, equiv_x,
                               [int(b) for b in args.omr_bits.split(",")], plot_dir)
    return out


def cached_model(name: str, args, compute) -> dict:
    """A model's measurements from ``<sweep-out>/models/<name>.json`` when that file was made from the same
    checkpoint (sha256 in its manifest) and arguments, else ``compute()`` — written there for the next call."""
    manifest = json.loads((Path(args.checkpoints) / f"{name}.json").read_text())
    key = {"sha256": manifest.get("sha256"), "calib": args.calib, "seed": args.seed, "omr_bits": args.omr_bits,
           "agreement_images": args.agreement_images}
    path = Path(args.sweep_out) / "models" / f"{name}.json"
    if path.is_file() and (cached := json.loads(path.read_text())).get("key") == key:
        print(name, f"measurements reused from {path}", flush=True)
        return cached["result"]
    result = compute()
    atomic_write_json(path, {"key": key, "result": result})
    return result


def sweep_points(args, names: list[str]) -> tuple[list[dict], dict]:
    """The sweep's point rows for ``names`` (run first unless ``--no-sweep``; then read from the folders)."""
    only = {"model": names} | {a: v.split(",") for a, v in (o.split("=", 1) for o in args.only)}
    sweep, out = load_sweep(args.sweep, only=only), Path(args.sweep_out)
    if args.no_sweep:
        points = [point_row(sweep, p, None) for p in plan(sweep, out, data=args.data)]
    else:
        points = run_sweep(sweep, out, data=args.data, num_cpus=args.num_cpus)["points"]
    counts = {s: sum(p["status"] == s for p in points) for s in sorted({p["status"] for p in points})}
    return points, {"file": args.sweep, "folder": args.sweep_out, "counts": counts}


def kept(previous: Path, models: dict) -> dict:
    """``models`` over the results file ``previous``: its models not measured now are kept whole, and its complete
    PTQ rows stand where this sweep folder has no complete row (a point run by an earlier invocation whose folder
    is gone, or left out by ``--only``); the table's note says which rows came from there."""
    if not previous.is_file():
        return models
    old = json.loads(previous.read_text())["models"]
    for name, m in models.items():
        now = {(r["bits"], r["method"]): r for r in m["ptq"]}
        before = {(r["bits"], r["method"]): r for r in old.get(name, {}).get("ptq", [])}
        m["ptq"] = [now[k] if k in now and (now[k]["status"] == "complete" or before.get(k, {}).get("status")
                                            != "complete")
                    else before[k] | {"error": "from the previous results file"}
                    for k in [*before, *(k for k in now if k not in before)]]
    return {n: models.get(n) or old[n] for n in MODELS if n in models or n in old}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the sweep's progress lines
    names = args.models.split(",")
    points, sweep = sweep_points(args, names)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    test = load_cifar10(root, "test")
    exact = load_cifar10(root, "test_exact")
    calib_source = calibration_set(load_cifar10(root, "train"), args.calib, args.seed)
    plot_dir = Path(args.out) / "model_zoo_plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    models = {n: cached_model(n, args, lambda n=n: run_model(n, args, calib_source, test, exact, points, plot_dir))
              for n in names}
    models = {n: m | {"ptq": ptq_rows(points, n)} for n, m in models.items()}  # the sweep as it is now
    if args.keep:
        models = kept(Path(args.out) / "model_zoo.json", models)
    sweep["counts"] = {s: sum(r["status"] == s for m in models.values() for r in m["ptq"])
                       for s in sorted({r["status"] for m in models.values() for r in m["ptq"]})}
    data = {"models": models, "sweep": sweep, "notes": args.note, "test": {"source": test.source, "n": len(test)},
            "test_exact": {"source": exact.source, "n": len(exact)},
            "calibration": {"source": calib_source.source, "n": len(calib_source), "seed": args.seed},
            "config": "per-channel weights (the default grid), per-tensor activations, MSE-initialised steps, "
                      "first/last layer 8-bit, BN fused"}
    write_result("model_zoo", data, render(data), out_dir=args.out, seed=args.seed)


def render(d: dict) -> str:
    parts = [f"Test: {d['test']['source']} ({d['test']['n']} images); genuine subset: {d['test_exact']['source']} "
             f"({d['test_exact']['n']}). Calibration: {d['calibration']['source']}.\nConfig: {d['config']}.\n"
             f"PTQ table: sweep `{d['sweep']['file']}` ({d['sweep']['counts']}); each point is one `qmap run` on "
             "the first 1,000 test images (top-1 of the quantized and the integer model), 250 iterations per "
             "block for AdaRound / BRECQ / QDrop, T = 500 network-wise for DOMR, 1024 calibration images; "
             "seconds = quantization, wall = the whole run, peak RSS of the run's process.\n"
             + "".join(f"\nNote: {n}\n" for n in d.get("notes", []))]
    for name, m in d["models"].items():
        parts.append(f"\n## {name} ({m['train']['epochs']} training epochs)\n\nFP top-1: {m['fp']['test_top1']:.2f} % "
                     f"(10k test), {m['fp']['test_exact_top1']:.2f} % (genuine 1,017)\n\n### PTQ table\n\n")
        parts.append(markdown_table([{"setting": r["bits"], "method": r["method"], "top-1 %": r["top1_quantized"],
                                      "integer top-1 %": r["top1_integer"], "quantize s": r["quantize_s"],
                                      "wall s": r["wall_s"], "peak RSS MB": r["peak_rss_mb"],
                                      "note": r.get("error") or ("" if r["status"] == "complete" else r["status"])}
                                     for r in m["ptq"]]) if m["ptq"] else "(no sweep points)\n")
        i = m["integer_w4a4_rtn"]
        parts.append(f"\n### Integer-only model vs fake-quant (RTN W4A4, all {d['test']['n']} test images)\n\n"
                     + markdown_table([{"fake-quant top-1 %": i["fake_quant_top1"],
                                        "integer top-1 %": i["integer_top1"],
                                        "arg-max agreement": i["argmax_agreement"],
                                        "isolated max code mismatch": i["isolated_max_mismatch_fraction"],
                                        "end-to-end max code mismatch": i["end_to_end_max_mismatch_fraction"]}]))
        hw = m["array_8x8"]
        parts.append(f"\n### Whole network on the 8x8 array (one image)\n\n{markdown_table([hw['summary']])}\n"
                     + (f"Host layers (signed input or not on the array): {', '.join(hw['host_layers'])}.\n\n"
                        if hw["host_layers"] else "")
                     + markdown_table(hw["layers"]))
        if any((r.get("groups") or 1) > 1 for r in hw["layers"]):
            parts.append("\nDepthwise layers use the array poorly: it has no grouped mode, so each group (one input "
                         "channel) is a dense pass that fills one of the 8 rows; its outputs' columns are the "
                         "group's output channels (1 for depthwise), so at most 1/64 of the PEs do useful work "
                         "(docs/hardware.md).\n")
        if "omr" in m:
            o = m["omr"]
            parts.append(f"\n### OMR on {', '.join(o['activations'])} inputs\n\n"
                         + markdown_table(o["rows"], ["setting", "variant", "top1", "extra_channels", "extra_macs_%"])
                         + "\nExactness (float64, full OMR vs the same-step quantizer with twice the upper clip, "
                         "genuine test images):\n\n" + markdown_table(o["equivalence"])
                         + f"\n![levels](model_zoo_plots/{o['figure']['plot']})\n\n" + markdown_table([o["figure"]]))
    return "".join(parts)


if __name__ == "__main__":
    main()
