"""``qmap export onnx --checkpoint FILE --out model.onnx``: quantize a checkpoint (RTN by default) on a
calibration set, write it as ONNX (QuantizeLinear on the activations, ConvInteger/MatMulInteger on the codes —
bit-identical to qmap's inference —, INT4 weights at opset >= 21) and verify it in onnxruntime against the
fake-quant model on CIFAR-10 (or --image-folder) test images."""

from __future__ import annotations

import json
import sys

import torch

from ..config import build_section
from ..data import calibration_set, load_split, to_tensor
from ..data.datasets import SPLITS
from ..errors import ConfigError
from ..methods import METHODS, get_method
from ..models import load_model
from ..quant import QuantConfig
from .common import (
    add_data_option,
    add_device_option,
    add_logging_options,
    add_model_options,
    bits,
    check_out_file,
    dataset_source,
    positive_int,
    refuse_existing,
    resolved_device,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a quantized model (ONNX)", description=__doc__)
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = formats.add_parser("onnx", help="ONNX with QuantizeLinear/DequantizeLinear, verified in onnxruntime",
                           description=__doc__)
    src = o.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--checkpoint", help="checkpoint (.safetensors with a .json manifest) to quantize")
    src.add_argument("--run", metavar="DIR", help="a finished qmap run folder: export its quantized model")
    o.add_argument("-o", "--out", required=True, help="ONNX file to write (.onnx)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    o.add_argument("--method", default="rtn", choices=sorted(METHODS), help="PTQ method (default: rtn)")
    o.add_argument("--w-bits", type=bits, default=4, help="weight bits (default 4)")
    o.add_argument("--a-bits", type=bits, default=4, help="activation bits (default 4)")
    o.add_argument("--first-last-bits", default="8",
                   help="bits of the first and last layer, or 'none' to quantize them like the rest (default 8)")
    o.add_argument("--calib-size", type=positive_int, default=1024, metavar="N",
                   help="calibration images (default 1024)")
    o.add_argument("--calib-split", default="train", choices=SPLITS, help="calibration split (default train)")
    o.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    o.add_argument("--opset", type=positive_int, default=21, help="ONNX opset (default 21; >= 21 allows INT4 weights)")
    o.add_argument("--no-int4", action="store_true", help="store 4-bit weights as INT8 even at opset >= 21")
    o.add_argument("--verify-split", default="test", choices=SPLITS,
                   help="images for the onnxruntime check (default: test, the 10k test split; test_exact: the "
                        "1017 genuine test images)")
    o.add_argument("--verify-limit", type=positive_int, metavar="N", help="verify on the first N images only")
    o.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    add_device_option(o)
    o.add_argument("--json", action="store_true", help="print one JSON object (export + verification report)")
    add_data_option(o)
    add_model_options(o)
    add_logging_options(o)
    o.set_defaults(func=run_onnx)


def _first_last_bits(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--first-last-bits must be an integer or 'none', got {value!r}") from None


def quantize_checkpoint(args, root, folder, size):
    """(fake-quant model, mean, std, report head, ONNX metadata) from --checkpoint and the quant options."""
    qcfg = build_section(QuantConfig, {"w_bits": args.w_bits, "a_bits": args.a_bits,
                                       "first_last_bits": _first_last_bits(args.first_last_bits)}, "quant")
    model, manifest = load_model(args.checkpoint, arch=args.model, num_classes=args.num_classes, mean=args.mean,
                                 std=args.std)
    mean, std = manifest.mean_std()
    device = resolved_device(args.device)
    calib = calibration_set(load_split(root, args.calib_split, folder, size), args.calib_size, args.seed)
    qmodel = get_method(args.method)(model.eval().to(device), to_tensor(calib.images, mean, std, device), qcfg).model
    meta = {"model": {"arch": manifest.arch, "width": manifest.width}, "method": {"name": args.method}}
    return qmodel, mean, std, {"checkpoint": str(args.checkpoint), "method": args.method, "qconfig": qcfg.to_dict(),
                               "calibration": calib.source}, meta


def load_run_model(args):
    """(fake-quant model, mean, std, report head, ONNX metadata) of the finished run folder --run."""
    from ..export.quantized import load_run

    _, qm = load_run(args.run)
    h = qm.header
    mean, std = qm.mean_std
    meta = {"model": {k: h["model"][k] for k in ("arch", "width")}, "method": h["method"]}
    return qm.model, mean, std, {"run": str(args.run), "method": h["method"].get("name"), "qconfig": h["quant"],
                                 "calibration": f"the run's ({args.run})"}, meta


def run_onnx(args) -> int:
    from ..export import export_onnx, verify_onnx

    check_out_file(args.out, (".onnx",))
    if not args.overwrite:
        refuse_existing(args.out)
    if args.opset < 13:
        raise ConfigError(f"--opset {args.opset}: QDQ export needs opset 13 or later")
    if args.run and any(getattr(args, k) is not None for k in ("model", "num_classes", "mean", "std")):
        raise ConfigError("--run exports the run's own model: --model/--num-classes/--mean/--std do not apply")
    root, folder, size = dataset_source(args)
    qmodel, mean, std, report, meta = load_run_model(args) if args.run else quantize_checkpoint(args, root, folder,
                                                                                                size)
    meta |= {"normalization": {"mean": list(mean), "std": list(std)}, "quant": report["qconfig"]}
    test = load_split(root, args.verify_split, folder, size)
    example = to_tensor(test.images[:2], mean, std, next(qmodel.parameters()).device)
    report["export"] = export_onnx(qmodel, args.out, example, args.opset, low_bit_types=not args.no_int4,
                                   metadata=meta)
    if not args.no_verify:
        if args.verify_limit is not None:
            test = test.head(args.verify_limit)
        x, y = to_tensor(test.images, mean, std), torch.as_tensor(test.labels)
        report["verify"] = {"data": test.source,
                            "reference": verify_onnx(args.out, qmodel, x, y, optimize=False),
                            "optimized": verify_onnx(args.out, qmodel, x, y, optimize=True)}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report, sys.stdout)
    return 0


def print_report(report: dict, out) -> None:
    ex = report["export"]
    q = report["qconfig"]
    print(f"wrote {ex['path']} ({ex['bytes'] / 1024:.1f} KiB, opset {ex['opset']}, {ex['nodes']} nodes: "
          + ", ".join(f"{k} {v}" for k, v in ex["op_counts"].items()) + ")", file=out)
    print(f"{report['method']} W{q.get('w_bits')}A{q.get('a_bits')} (first/last layer: {q.get('first_last_bits')}), "
          f"calibrated on {report['calibration']}", file=out)
    if "verify" not in report:
        return
    print(f"onnxruntime vs fake-quant on {report['verify']['data']}:", file=out)
    for mode, v in (("as written (reference)", report["verify"]["reference"]),
                    ("ORT optimised (default)", report["verify"]["optimized"])):
        print(f"  {mode:24s} max |dlogit| {v['max_abs_diff']:.3g} ({v['max_rel_diff']:.2g} of max |logit|), "
              f"{100 * v['images_close']:.1f} % of images within 1e-4, "
              f"top-1 agreement {100 * v['top1_agreement']:.2f} %, "
              f"top-1 torch {100 * v['top1_torch']:.2f} % "
              f"/ onnx {100 * v['top1_onnx']:.2f} %, {v['ort_images_per_s']:.0f} images/s", file=out)
