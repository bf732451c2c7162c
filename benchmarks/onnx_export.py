"""ONNX export of the reference checkpoint (vgg16_bn_sq8 w0.5) at W4A4 and W8A8 RTN, checked in onnxruntime.

For each configuration: export (opset 21: INT4 weights at 4 bits), then on the CIFAR-10 test split (--split)
the max |Δlogit| and top-1 of the fake-quant model (torch) against onnxruntime, with the graph run as written
("reference", ORT_DISABLE_ALL) and with onnxruntime's default optimisations ("optimized", what a plain
``InferenceSession(path)`` gives), the arg-max agreement of each with qmap's fake-quant model, the file size
(next to the float model exported the same way) and images/s. The file stores biases as int32 in accumulator
units (plus their float fraction), so the default optimisations have no bias to re-round (docs/onnx.md); every
quantized layer is ConvInteger/MatMulInteger on the codes, as qmap's inference computes it. ``float_sum_*``:
qmap's fake-quant model against itself with float accumulation of x̂·ŵ (its autograd path) — what any float
Conv/Gemm graph can at best agree to.

    python benchmarks/onnx_export.py [--data DIR] [--checkpoint FILE] [--calib 1024] [--threads 2] [--split test]
                                     [--configs FP32,W8A8,W4A4]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from qmap.data import calibration_set, load_cifar10, resolve_data_root, to_tensor
from qmap.data.datasets import SPLITS
from qmap.export.onnx import compare_logits, export_onnx, ort_logits, torch_logits
from qmap.methods import get_method
from qmap.models import load_model
from qmap.nn import fuse_bn
from qmap.quant import QuantConfig
from qmap.report.results import markdown_table, write_result

CONFIGS = [("FP32", None), ("W8A8", (8, 8)), ("W4A4", (4, 4))]


def measure(name, model, path, x, y, threads) -> dict:
    report = export_onnx(model, path, x[:2])
    ref, torch_s = torch_logits(model, x)
    row = {"config": name, "file_kib": report["bytes"] / 1024, "top1_torch": float((ref.argmax(1) == y).float().mean()),
           "torch_img_s": len(x) / torch_s, "weight_types": sorted({(layer["weight"] or {}).get("type", "FLOAT")
                                                                    for layer in report["layers"]})}
    if name != "FP32":  # the cause of any float-graph disagreement: torch against itself, float vs exact sums
        floaty = copy.deepcopy(model).requires_grad_(True)  # with autograd on, layers sum the floats x̂·ŵ
        with torch.enable_grad():
            alt = torch.cat([floaty(x[i:i + 256]).detach() for i in range(0, len(x), 256)])
        cmp = compare_logits(ref, alt, y)
        row |= {"float_sum_top1_agreement": cmp["top1_agreement"], "float_sum_max_abs_diff": cmp["max_abs_diff"]}
    for mode, optimize in (("reference", False), ("optimized", True)):
        out, seconds = ort_logits(path, x, threads=threads, optimize=optimize)
        cmp = compare_logits(ref, out, y)
        row |= {f"{mode}_max_abs_diff": cmp["max_abs_diff"], f"{mode}_max_rel_diff": cmp["max_rel_diff"],
                f"{mode}_top1_onnx": cmp["top1_onnx"], f"{mode}_top1_agreement": cmp["top1_agreement"],
                f"{mode}_images_close": cmp["images_close"],
                f"{mode}_img_s": len(x) / seconds}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data root (default: $QMAP_DATA)")
    ap.add_argument("--checkpoint", help="default: <data>/models/vgg16_bn_sq8_w0.5.safetensors")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default="test", choices=SPLITS,
                    help="test images: 'test' (10k) or 'test_exact' (the 1017 genuine images, faster)")
    ap.add_argument("--configs", default=",".join(name for name, _ in CONFIGS),
                    help="comma-separated subset of " + ", ".join(name for name, _ in CONFIGS))
    args = ap.parse_args()
    wanted = args.configs.split(",")
    if unknown := set(wanted) - {name for name, _ in CONFIGS}:
        ap.error(f"unknown configs: {', '.join(sorted(unknown))}")
    torch.set_num_threads(args.threads)
    root = resolve_data_root(args.data)
    ckpt = Path(args.checkpoint or root / "models" / "vgg16_bn_sq8_w0.5.safetensors")
    model, manifest = load_model(ckpt)
    model.eval()
    mean, std = manifest.mean_std()
    calib = calibration_set(load_cifar10(root, "train"), args.calib, args.seed)
    test = load_cifar10(root, args.split)
    x, y = to_tensor(test.images, mean, std), torch.as_tensor(test.labels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits in (c for c in CONFIGS if c[0] in wanted):
            if bits is None:
                qmodel = fuse_bn(copy.deepcopy(model))
            else:
                qcfg = QuantConfig(w_bits=bits[0], a_bits=bits[1])
                qmodel = get_method("rtn")(model, to_tensor(calib.images, mean, std), qcfg).model
            rows.append(measure(name, qmodel, Path(tmp) / f"{name}.onnx", x, y, args.threads))
            print(rows[-1], flush=True)
    cols = ["config", "weight_types", "file_kib", "top1_torch", "reference_top1_onnx", "reference_max_abs_diff",
            "reference_top1_agreement", "reference_images_close",
            "optimized_top1_onnx", "optimized_max_abs_diff", "optimized_top1_agreement",
            "float_sum_top1_agreement", "float_sum_max_abs_diff",
            "torch_img_s", "reference_img_s", "optimized_img_s"]
    body = (f"Checkpoint `{ckpt.name}`, RTN (MSE observers, first/last layer 8 bit), calibration: {calib.source}. "
            f"Test data: {test.source} ({len(test)} images). onnxruntime CPU, {args.threads} threads, batch 256; "
            "`reference` = graph run as written (ORT_DISABLE_ALL), `optimized` = onnxruntime defaults. "
            "top-1 as fractions; `images_close` = fraction of images with max |Δlogit| ≤ 1e-4·max|logit|; "
            "img/s count forward passes only; `float_sum_*` = qmap's model against itself summing the floats "
            "x̂·ŵ instead of the integer codes (the ceiling of any float Conv/Gemm graph). "
            "Goal: `optimized_top1_agreement` ≥ 0.999 on the 10k test split.\n\n"
            + markdown_table(rows, cols))
    write_result("onnx_export", {"checkpoint": str(ckpt), "calibration": calib.source, "test_data": test.source,
                                 "threads": args.threads, "rows": rows}, body, seed=args.seed)


if __name__ == "__main__":
    main()
