"""Weight combine (α-scaling) on the reference vgg16_bn_sq8 (width 0.5): per-layer output MSE before/after α,
the 8×8 layer's fused weights with its 4-bit levels at α = 1 and at the chosen α, integer weights collapsing to 0,
and W4A4 / W3A3 top-1 of α-scaling versus RTN on the same fixed grid (α = 1), for several weight grids.

    python benchmarks/alpha_scaling.py [--data DIR] [--calib 1024] [--search-images 256] [--seed 0]

Writes benchmarks/results/alpha_scaling.{json,md} and alpha_scaling_*.png. Data: --data or QMAP_DATA.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from qmap.data import calibration_set, load_cifar10, resolve_data_root, to_tensor
from qmap.errors import DataError
from qmap.evaluate import evaluate
from qmap.methods.alpha import fixed_grid_step, integer_kernel, prepare, scale_layers
from qmap.models import load_model
from qmap.nn import get_module
from qmap.quant import QuantConfig, quant_layers, quantize_model
from qmap.report.plots import grouped_bars, save_figure, weight_histogram_with_levels
from qmap.report.results import markdown_table, write_result

NAME = "alpha_scaling"
OUT = Path("benchmarks/results")
CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"
TARGET = "features.27"
# name -> (QuantConfig overrides, fixed grid)
SETTINGS = {
    "per-channel, MSE-init grid": ({"w_per_channel": True}, "initial"),
    "per-tensor, MSE-init grid": ({"w_per_channel": False}, "initial"),
    "per-tensor, pow2 grid": ({"w_per_channel": False}, "pow2"),
}
BITS = (4, 3)
SEARCH_GRID = {"grid": (0.5, 2.0), "refine": True, "refine_iters": 20}


def load_data(root: Path, n_calib: int, seed: int, test_limit: int | None):
    """Calibration subset of the train split; the test split (10k JPEG mirror or pickles) and the genuine
    1017-image prefix as a cross-check. ``test_limit`` keeps the first images only (smoke runs)."""
    calib = calibration_set(load_cifar10(root, "train"), n_calib, seed)
    tests = {"test": load_cifar10(root, "test")}
    try:
        tests["test_exact"] = load_cifar10(root, "test_exact")
    except DataError as e:
        print(f"genuine 1017-image cross-check skipped: {e}")
    if test_limit:
        tests = {k: ds.subset(np.arange(min(test_limit, len(ds))), source=f"{ds.source} first {test_limit}")
                 for k, ds in tests.items()}
    return calib, tests


def top1(model, tests: dict, mean, std) -> dict:
    return {k: evaluate(model, ds, mean, std, progress=False)["top1"] for k, ds in tests.items()}


def levels(step: float, spec) -> np.ndarray:
    return np.arange(spec.qmin, spec.qmax + 1) * step


def target_summary(model, rows: dict) -> dict:
    """Chosen α, zeros, grid step and the integer kernel of the 8×8 layer (what the hardware export reads)."""
    layer = get_module(model, TARGET)
    ints, step = integer_kernel(layer)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    assert torch.equal(layer.quantized_weight(), ints.float() * step.reshape(shape)), "fake-quant != step·int"
    row = rows[TARGET]
    return {"alpha": row["alpha"], "grid_step": row["grid_step"], "dequant_step": step.tolist(),
            "zeros_before": row["zeros_before"], "zeros_after": row["zeros_after"], "weights": row["weights"],
            "mse_before": row["mse_before"], "mse_after": row["mse_after"], "int_kernel": ints.tolist()}


def copy_activation_steps(dst, src) -> None:
    """Give ``dst`` the input quantizers calibrated in ``src`` (same layers and bits). Calibration sees FP
    activations only, so it does not depend on the weight grid: one calibration serves every setting."""
    for (_, a), (_, b) in zip(quant_layers(dst), quant_layers(src)):
        a.input_quantizer.spec = b.input_quantizer.spec
        a.input_quantizer.load_state_dict(b.input_quantizer.state_dict())


def run_setting(model, calibrated, cal, tests, mean, std, qcfg, fixed_grid: str, search: dict) -> dict:
    """RTN on the fixed grid (α = 1) and α-scaling on the same grid: top-1 of both, per-layer rows."""
    base = quantize_model(model, qcfg)
    copy_activation_steps(base, calibrated)
    for _, layer in quant_layers(base):
        layer.weight_quantizer.set_qparams(fixed_grid_step(layer.weight_quantizer.scale, fixed_grid))
    acc_base = top1(base, tests, mean, std)
    scaled = copy.deepcopy(base)
    rows = scale_layers(scaled, cal[:search["search_images"]], search["criterion"], search["sequential"],
                        search=SEARCH_GRID | {"points": search["points"]})
    acc_alpha = top1(scaled, tests, mean, std)
    return {"bits": qcfg.w_bits, "top1_rtn": acc_base, "top1_alpha": acc_alpha,
            "search_seconds": sum(r["seconds"] for r in rows.values()), "layers": rows,
            "target": target_summary(scaled, rows), "_model": scaled}


def plot_histogram(runs: dict, path: Path) -> None:
    """One panel per per-tensor setting: the 8×8 layer's fused weights, 4-bit levels at α = 1 and chosen α."""
    panels = [k for k in runs if "per-tensor" in k]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.4 * len(panels)), squeeze=False)
    for ax, name in zip(axes[:, 0], panels):
        run = runs[name][4]
        layer = get_module(run["_model"], TARGET)
        w = layer.fp_weight.numpy()
        t = run["target"]
        s, a = t["grid_step"][0], t["alpha"]
        spec = layer.weight_quantizer.spec
        weight_histogram_with_levels(ax, w, [levels(s, spec), levels(s / a, spec)],
                                     [f"4-bit levels, α = 1 (step {s:.4g})", f"chosen α = {a:.3f} (step {s / a:.4g})"],
                                     title=f"{TARGET} fused weights — {name}: zeros {t['zeros_before']} → "
                                           f"{t['zeros_after']} of {t['weights']}")
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data root (default: QMAP_DATA)")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--search-images", type=int, default=256)
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only (smoke)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = resolve_data_root(args.data)
    model, manifest = load_model(root / CHECKPOINT)
    mean, std = manifest.normalize_mean, manifest.normalize_std
    calib_ds, tests = load_data(root, args.calib, args.seed, args.test_limit)
    cal = to_tensor(calib_ds.images, mean, std)
    search = {"points": args.points, "search_images": args.search_images, "criterion": "output_mse",
              "sequential": True, **SEARCH_GRID}
    t0 = time.perf_counter()
    fp = top1(model, tests, mean, std)
    runs: dict = {name: {} for name in SETTINGS}
    for bits in BITS:
        calibrated = prepare(model, cal, QuantConfig(w_bits=bits, a_bits=bits))
        for name, (ov, grid) in SETTINGS.items():
            print(f"{name}, W{bits}A{bits} ...", flush=True)
            qcfg = QuantConfig(w_bits=bits, a_bits=bits, **ov)
            runs[name][bits] = run_setting(model, calibrated, cal, tests, mean, std, qcfg, grid, search)
    OUT.mkdir(parents=True, exist_ok=True)
    plot_histogram(runs, OUT / f"{NAME}_hist_{TARGET.replace('.', '_')}.png")
    rows, mse_rows = [], []
    for name, by_bits in runs.items():
        slug = name.replace(", ", "_").replace(" ", "-")
        w4 = by_bits[4]["layers"]
        grouped_bars(OUT / f"{NAME}_mse_{slug}.png", list(w4),
                     {"α = 1 (RTN on the grid)": [r["mse_before"] for r in w4.values()],
                      "chosen α": [r["mse_after"] for r in w4.values()]},
                     ylabel="layer output MSE (W4A4)", title=f"per-layer output MSE, {name}")
        for layer, r in w4.items():
            mse_rows.append({"setting": name, "layer": layer, "alpha": r["alpha"], "mse α=1": r["mse_before"],
                             "mse chosen α": r["mse_after"], "reduction %": 100 * (1 - r["mse_after"] / r["mse_before"])
                             if r["mse_before"] > 0 else 0.0, "zeros α=1": r["zeros_before"],
                             "zeros chosen α": r["zeros_after"]})
        for bits, run in by_bits.items():
            gap = fp["test"] - run["top1_rtn"]["test"]
            closed = (run["top1_alpha"]["test"] - run["top1_rtn"]["test"]) / gap if gap > 0 else float("nan")
            run["gap_closed"] = closed
            rows.append({"setting": name, "bits": f"W{bits}A{bits}", "FP": 100 * fp["test"],
                         "RTN (α=1)": 100 * run["top1_rtn"]["test"], "α-scaling": 100 * run["top1_alpha"]["test"],
                         "gap closed": closed, "RTN exact1017": 100 * run["top1_rtn"].get("test_exact", float("nan")),
                         "α exact1017": 100 * run["top1_alpha"].get("test_exact", float("nan")),
                         f"α {TARGET}": run["target"]["alpha"],
                         f"zeros {TARGET}": f"{run['target']['zeros_before']} → {run['target']['zeros_after']}",
                         "search s": run["search_seconds"]})
    data = {"checkpoint": str(root / CHECKPOINT), "test_sources": {k: ds.source for k, ds in tests.items()},
            "calibration": {"source": calib_ds.source, "n": len(calib_ds), "seed": args.seed},
            "search": search, "fp_top1": fp, "seconds": time.perf_counter() - t0,
            "settings": {name: {"qconfig": ov, "fixed_grid": grid,
                                "runs": {f"W{b}A{b}": {k: v for k, v in by_bits[b].items() if k != "_model"}
                                         for b in BITS}}
                         for (name, (ov, grid)), by_bits in zip(SETTINGS.items(), runs.values())},
            "accuracy_table": rows}
    body = render(data, rows, mse_rows)
    write_result(NAME, data, body, out_dir=OUT, seed=args.seed)
    print(markdown_table(rows))


def render(data: dict, rows: list[dict], mse_rows: list[dict]) -> str:
    cal = data["calibration"]
    text = [f"Reference `vgg16_bn_sq8` width 0.5, FP top-1 {100 * data['fp_top1']['test']:.2f} % on "
            f"{data['test_sources']['test']}. Calibration: {cal['n']} images ({cal['source']}); α search on the "
            f"first {data['search']['search_images']} of them, criterion {data['search']['criterion']}, sequential "
            f"(each layer sees the already-quantized earlier layers), {data['search']['points']} log-spaced α in "
            "[0.5, 2] plus α = 1, golden-section refinement. RTN = the same fixed grid with α = 1 "
            "(first/last layer at 8 bits, activations MSE-calibrated, as QuantConfig's defaults).\n",
            "## Top-1 (%) — JPEG test mirror; `gap closed` = (α − RTN)/(FP − RTN)\n", markdown_table(rows),
            f"\n![histogram](alpha_scaling_hist_{TARGET.replace('.', '_')}.png)\n",
            "\n## Per-layer output MSE at W4A4\n", markdown_table(mse_rows)]
    return "\n".join(text)


if __name__ == "__main__":
    main()
