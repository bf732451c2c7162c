"""Model zoo: the trained ResNet-20, MobileNet-style and GELU CNN checkpoints (``checkpoints/``) through qmap.

Per model: FP top-1 on the test split and on the genuine 1,017-image subset; each PTQ method at each setting
(per-channel weights, MSE-initialised steps, first/last layer 8-bit; calibration = a seeded class-balanced
subset of the training split) with its wall time; the integer-only model against the fake-quant model
(arg-max agreement, per-layer code mismatches) and the whole-network 8x8 array view of one image (cycles,
utilisation). A stage that qmap cannot yet do for a model is recorded with qmap's one-line reason, not skipped
silently.

    QMAP_DATA=../shared/data nice python benchmarks/model_zoo.py [--test-limit N] [--methods rtn,adaround]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from rtn_table import integer_row  # benchmarks/ is sys.path[0] when run as a script

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.errors import QmapError
from qmap.evaluate import evaluate
from qmap.hw.check import network_view
from qmap.hw.spec import ArraySpec
from qmap.methods import get_method
from qmap.models import load_model
from qmap.quant import QuantConfig, to_integer_model
from qmap.report.results import markdown_table, write_result

MODELS = ("resnet20", "mobilenet_cifar", "gelu_cnn")
SETTINGS = ("W8A8", "W4A4", "W3A3", "W2A4", "W4A2")
INTEGER_SETTINGS = ("W8A8", "W4A4")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder with <model>.safetensors + .json")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default="rtn", help="comma-separated qmap methods (default: rtn)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--calib", type=int, default=1024, help="calibration images (class-balanced, seeded)")
    p.add_argument("--agreement-images", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if not args.data:
        p.error("set QMAP_DATA or pass --data")
    return args


def bits(setting: str) -> tuple[int, int]:
    w, a = setting[1:].split("A")
    return int(w), int(a)


def attempt(fn, *args):
    """``fn(*args)``, or ``{"unsupported": <qmap's one-line reason>}`` when qmap refuses the model."""
    try:
        return fn(*args)
    except QmapError as e:
        return {"unsupported": f"{type(e).__name__}: {e}"}


def top1(model, data, mean, std) -> float:
    return 100 * evaluate(model, data, mean, std, device="cpu", progress=False)["top1"]


def integer_check(qmodel, test, mean, std, agree_x: torch.Tensor, fq_top1: float) -> dict:
    """rtn_table's integer-vs-fake-quant row, plus the 8x8 array view of the first image."""
    row = integer_row(qmodel, test, mean, std, agree_x, fq_top1)
    hw = attempt(network_view, to_integer_model(qmodel), agree_x[:1], ArraySpec(8, 8, psum_bits=32))
    return {**{k: row[k] for k in ("integer_top1", "argmax_agreement", "isolated_max_mismatch_fraction")},
            "hardware_8x8": hw if "unsupported" in hw else {k: hw["summary"][k] for k in
                                                            ("layers", "macs", "cycles", "utilisation", "mismatches")}}


def run_model(name: str, args, calib_source, test, exact) -> dict:
    model, manifest = load_model(Path(args.checkpoints) / f"{name}.safetensors")
    mean, std = manifest.mean_std()
    calib = to_tensor(calib_source.images, mean, std)
    agree_x = to_tensor(test.images[:args.agreement_images], mean, std)
    fp = {"test_top1": top1(model, test, mean, std), "test_exact_top1": top1(model, exact, mean, std)}
    print(name, "FP", fp, flush=True)
    rows = []
    for setting in args.settings.split(","):
        w, a = bits(setting)
        cfg = QuantConfig(w_bits=w, a_bits=a, w_observer="mse", a_observer="mse")
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            q = attempt(get_method(method), model, calib, cfg)
            row = {"setting": setting, "method": method}
            if isinstance(q, dict):
                rows.append(row | q)
            else:
                row |= {"seconds": time.perf_counter() - t0, "top1": top1(q.model, test, mean, std)}
                if method == "rtn" and setting in INTEGER_SETTINGS:
                    row["integer"] = attempt(integer_check, q.model, test, mean, std, agree_x, row["top1"])
                rows.append(row)
            print(name, {k: v for k, v in rows[-1].items()}, flush=True)
    return {"arch": manifest.arch, "manifest_test_top1": 100 * manifest.extra.get("test_top1", float("nan")),
            "epochs": manifest.extra.get("train", {}).get("epochs"), "fp": fp, "rows": rows}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    test = load_cifar10(root, "test")
    test = test.head(args.test_limit) if args.test_limit else test
    exact = load_cifar10(root, "test_exact")
    calib_source = calibration_set(load_cifar10(root, "train"), args.calib, args.seed)
    models = {name: run_model(name, args, calib_source, test, exact) for name in args.models.split(",")}
    data = {"models": models, "test": {"source": test.source, "n": len(test)},
            "test_exact": {"source": exact.source, "n": len(exact)},
            "calibration": {"source": calib_source.source, "n": len(calib_source), "seed": args.seed},
            "config": "per-channel symmetric weights, per-tensor activations, MSE-initialised steps, first/last "
                      "layer 8-bit, BN fused"}
    write_result("model_zoo", data, render(data), out_dir=args.out, seed=args.seed)


def render(d: dict) -> str:
    parts = [f"Test: {d['test']['source']} ({d['test']['n']} images); genuine subset: {d['test_exact']['source']} "
             f"({d['test_exact']['n']}). Calibration: {d['calibration']['source']}.\nConfig: {d['config']}.\n"]
    for name, m in d["models"].items():
        parts.append(f"\n## {name} ({m['epochs']} training epochs)\n\nFP top-1: {m['fp']['test_top1']:.2f} % "
                     f"(test), {m['fp']['test_exact_top1']:.2f} % (genuine 1,017)\n\n")
        parts.append(markdown_table([{"setting": r["setting"], "method": r["method"],
                                      "top-1 %": r.get("top1", "—"), "seconds": r.get("seconds", "—"),
                                      "note": r.get("unsupported", "")} for r in m["rows"]]))
        ints = [(r["setting"], r["integer"]) for r in m["rows"] if "integer" in r]
        if ints:
            parts.append("\nInteger-only model vs fake-quant (RTN), and the 8x8 array view of one image:\n\n")
            parts.append(markdown_table([
                {"setting": s, **({"note": i["unsupported"]} if "unsupported" in i else {
                    "integer top-1 %": i["integer_top1"], "arg-max agreement": i["argmax_agreement"],
                    "isolated max mismatch": i["isolated_max_mismatch_fraction"],
                    **({"array": i["hardware_8x8"]["unsupported"]} if "unsupported" in i["hardware_8x8"] else {
                        "array layers": i["hardware_8x8"]["layers"], "cycles": i["hardware_8x8"]["cycles"],
                        "utilisation": i["hardware_8x8"]["utilisation"]})})}
                for s, i in ints]))
    return "".join(parts)


if __name__ == "__main__":
    main()
