"""Weight grid at low bit widths: signed symmetric vs affine (per-channel zero point), RTN on the reference checkpoint.

For each setting (W2A4, W3A3, W4A4 by default; first/last layer 8-bit, per-channel MSE-initialised weights,
MSE-calibrated per-tensor activations) and each weight grid — ``symmetric`` (zero point 0, codes
−2^(b−1)…2^(b−1)−1), ``affine`` (step and integer zero point searched jointly per channel by L2 error) and
``affine p=2.4`` (the same with the L2.4 error) — RTN top-1 on the first ``--test-images`` test images, and
two weight statistics over the low-bit layers:

- ``clip %``: weights beyond the grid's half-step margin (|ŵ − w| > s/2, clipped at either end);
- ``bias share``: per output channel, |Σ_i (ŵ_i − w_i)| / Σ_i |ŵ_i − w_i|, averaged — the part of the
  rounding error that is a bias shift on non-negative inputs (0: errors cancel, 1: all of one sign).

This is the measurement behind ``QuantConfig.w_symmetric=None`` (affine below 4 bits).

    QMAP_DATA=../shared/data nice python benchmarks/weight_grid.py [--test-images 1000] [--settings W2A4 W3A3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.evaluate import evaluate
from qmap.methods.rtn import apply as rtn
from qmap.models import load_model
from qmap.quant import QuantConfig, quant_layers
from qmap.report.results import markdown_table, write_result

CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"
GRIDS = {"symmetric": {"w_symmetric": True}, "affine": {"w_symmetric": False},
         "affine p=2.4": {"w_symmetric": False, "w_p_norm": 2.4}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--settings", nargs="+", default=["W2A4", "W3A3", "W4A4"])
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--test-images", type=int, default=1000, help="first N images of the test split")
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args()


@torch.no_grad()
def weight_stats(qmodel, w_bits: int) -> dict:
    """Clip fraction and per-channel error bias over the layers quantized at ``w_bits``."""
    clipped = total = 0
    ratios = []
    for _, m in quant_layers(qmodel):
        wq = m.weight_quantizer
        if wq.spec.bits != w_bits:
            continue
        w = m.weight.detach()
        err = (wq(w) - w).reshape(w.shape[0], -1)
        s = wq.scale.detach().reshape(-1, 1)
        clipped += int((err.abs() > 0.5 * s * (1 + 1e-6)).sum())
        total += err.numel()
        ratios.append(err.sum(1).abs() / err.abs().sum(1).clamp_min(1e-30))
    return {"clip_pct": 100 * clipped / max(1, total), "bias_ratio": float(torch.cat(ratios).mean())}


def load_inputs(data: str, test_images: int, n_calib: int, seed: int):
    """(model, mean, std, first test images, calibration set) from the data root."""
    model, manifest = load_model(Path(data) / CHECKPOINT)
    return (model, *manifest.mean_std(), load_cifar10(data, "test").head(test_images),
            calibration_set(load_cifar10(data, "train"), n_calib, seed))


def main() -> None:
    args = parse_args()
    if not args.data:
        raise SystemExit("set QMAP_DATA or pass --data")
    torch.set_num_threads(args.threads)
    model, mean, std, test, calib_set = load_inputs(args.data, args.test_images, args.calib, args.seed)
    calib = to_tensor(calib_set.images, mean, std)
    rows = []
    for setting in args.settings:
        w, a = (int(v) for v in setting[1:].split("A"))
        for grid in args.grids:
            res = rtn(model, calib, QuantConfig(w_bits=w, a_bits=a, **GRIDS[grid]))
            r = evaluate(res.model, test, mean, std, device="cpu", progress=False)
            rows.append({"setting": setting, "grid": grid, "top1": 100 * r["top1"],
                         **weight_stats(res.model, w), "init_seconds": res.report["seconds"]})
            print(rows[-1], flush=True)
    data = {"rows": rows, "test": {"source": test.source, "n": len(test)},
            "calibration": {"source": calib_set.source, "n": len(calib_set), "seed": args.seed},
            "config": "RTN, per-channel weights (MSE init), per-tensor MSE activations, first/last layer 8-bit"}
    write_result("weight_grid", data, render(data), out_dir=args.out, seed=args.seed)


def render(d: dict) -> str:
    table = [{"setting": r["setting"], "weight grid": r["grid"], "RTN top-1 %": r["top1"],
              "clip %": r["clip_pct"], "bias share": r["bias_ratio"]} for r in d["rows"]]
    return (f"Test: {d['test']['source']} ({d['test']['n']} images). Calibration: {d['calibration']['source']}.\n"
            f"Config: {d['config']}. Weight statistics over the low-bit layers only; "
            "bias share = |Σ err| / Σ |err| per channel, averaged.\n\n" + markdown_table(table))


if __name__ == "__main__":
    main()
