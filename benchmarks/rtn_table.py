"""RTN baseline table on the reference checkpoint, integer-model agreement, fake-quant evaluation throughput.

For each setting (W8A8, W4A8, W4A4, W3A3, W2A4, W4A2; per-channel weights, first/last layer 8-bit) and each
initialisation (min-max, MSE search of the clipping range for weights and activations): RTN with activation
steps calibrated on a seeded, class-balanced calibration subset of the training split, top-1 on the test split.
Then, for W8A8 and W4A4 (MSE init): the integer-only model's top-1, its arg-max agreement with the fake-quant
model, the per-layer isolated integer agreement and the accumulator widths. Last, evaluation throughput of the
FP and the W4A4 fake-quant model (images/s, median of ``--repeats``).

    QMAP_DATA=../shared/data nice python benchmarks/rtn_table.py [--test-split test] [--calib 1024]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.evaluate import evaluate
from qmap.methods.rtn import apply as rtn
from qmap.models import load_model
from qmap.quant import QuantConfig, to_integer_model
from qmap.quant.agreement import compare_with_fake_quant
from qmap.report.results import markdown_table, median_of, write_result

SETTINGS = [(8, 8), (4, 8), (4, 4), (3, 3), (2, 4), (4, 2)]
OBSERVERS = ("minmax", "mse")
INTEGER_SETTINGS = [(8, 8), (4, 4)]
CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--test-split", default="test", choices=["test", "test_exact"])
    p.add_argument("--calib-split", default="train", choices=["train", "train_exact"])
    p.add_argument("--calib", type=int, default=1024, help="calibration images (class-balanced, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    p.add_argument("--agreement-images", type=int, default=256, help="images for the per-layer integer comparison")
    p.add_argument("--integer-images", type=int, default=None, help="test images for integer top-1 (default: all)")
    p.add_argument("--speed-images", type=int, default=None, help="test images per throughput run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args()


def top1(model, data, mean, std) -> dict:
    r = evaluate(model, data, mean, std, device="cpu", progress=False)
    return {"top1": 100 * r["top1"], "images_per_s": r["images_per_s"]}


def integer_row(qmodel, test, mean, std, agree_x: torch.Tensor, fq_top1: float) -> dict:
    imodel = to_integer_model(qmodel)
    agreement = compare_with_fake_quant(qmodel, imodel, agree_x)
    t0 = time.perf_counter()
    preds, fq_preds = [], []
    with torch.no_grad():
        for start in range(0, len(test), 500):
            x = to_tensor(test.images[start:start + 500], mean, std)
            preds.append(imodel.run(x).logits.argmax(1))
            fq_preds.append(qmodel(x).argmax(1))
    preds, fq_preds = torch.cat(preds), torch.cat(fq_preds)
    labels = torch.as_tensor(test.labels)
    int_top1 = 100 * float((preds == labels).double().mean())
    layers = agreement["layers"]
    return {"integer_top1": int_top1, "fake_quant_top1": fq_top1, "delta_pp": int_top1 - fq_top1,
            "argmax_agreement": float((preds == fq_preds).double().mean()),
            "isolated_max_mismatch_fraction": max((r["isolated"]["mismatch_fraction"] for r in layers
                                                   if r["isolated"] is not None), default=None),
            "isolated_max_lsb": max((r["isolated"]["max_lsb"] for r in layers if r["isolated"] is not None),
                                    default=None),
            "end_to_end_max_mismatch_fraction": max(r["end_to_end"]["mismatch_fraction"] for r in layers[:-1]),
            "per_layer": layers, "accumulators": imodel.accumulator_report(),
            "integer_seconds": time.perf_counter() - t0}


def main() -> None:
    args = parse_args()
    if not args.data:
        raise SystemExit("set QMAP_DATA or pass --data")
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    model, manifest = load_model(root / CHECKPOINT)
    mean, std = manifest.mean_std()
    test = load_cifar10(root, args.test_split)
    calib_set = calibration_set(load_cifar10(root, args.calib_split), args.calib, args.seed)
    calib = to_tensor(calib_set.images, mean, std)
    fp = top1(model, test, mean, std)
    rows, integer, qmodels = [], {}, {}
    for w, a in SETTINGS:
        for obs in OBSERVERS:
            cfg = QuantConfig(w_bits=w, a_bits=a, w_observer=obs, a_observer=obs)
            res = rtn(model, calib, cfg)
            r = top1(res.model, test, mean, std)
            rows.append({"setting": f"W{w}A{a}", "init": obs, "top1": r["top1"], "drop_pp": fp["top1"] - r["top1"],
                         "init_seconds": res.report["seconds"]})
            print(rows[-1], flush=True)
            if (w, a) in INTEGER_SETTINGS and obs == "mse":
                qmodels[(w, a)] = (res.model, r["top1"])
    agree_x = to_tensor(test.images[:args.agreement_images], mean, std)
    int_test = test.subset(range(args.integer_images), source=f"{test.source}, first {args.integer_images}") \
        if args.integer_images else test
    for (w, a), (qm, _) in qmodels.items():
        fq_top1 = top1(qm, int_test, mean, std)["top1"] if args.integer_images else qmodels[(w, a)][1]
        integer[f"W{w}A{a}"] = integer_row(qm, int_test, mean, std, agree_x, fq_top1)
        print(f"W{w}A{a}", {k: v for k, v in integer[f"W{w}A{a}"].items() if not isinstance(v, list)}, flush=True)
    fq_model = qmodels[(4, 4)][0]
    speed_set = test.subset(range(args.speed_images), source="speed subset") if args.speed_images else test
    speed = {"n_images": len(speed_set),
             "fp": median_of([top1(model, speed_set, mean, std)["images_per_s"] for _ in range(args.repeats)]),
             "fake_quant_w4a4": median_of([top1(fq_model, speed_set, mean, std)["images_per_s"]
                                           for _ in range(args.repeats)])}
    speed["slowdown"] = speed["fp"]["median"] / speed["fake_quant_w4a4"]["median"]
    data = {"fp_top1": fp["top1"], "rows": rows, "integer": integer, "throughput": speed,
            "test": {"split": args.test_split, "source": test.source, "n": len(test)},
            "integer_test": {"source": int_test.source, "n": len(int_test)},
            "calibration": {"split": args.calib_split, "source": calib_set.source, "n": len(calib_set),
                            "seed": args.seed},
            "config": "per-channel symmetric weights, per-tensor activations (unsigned after ReLU), first/last "
                      "layer 8-bit, half-even rounding, BN fused"}
    write_result("rtn_table", data, render(data), out_dir=args.out, seed=args.seed)


def render(d: dict) -> str:
    by = {(r["setting"], r["init"]): r for r in d["rows"]}
    table = [{"setting": s, **{f"top-1 {o}": by[(s, o)]["top1"] for o in OBSERVERS},
              **{f"init s {o}": by[(s, o)]["init_seconds"] for o in OBSERVERS}}
             for s in dict.fromkeys(r["setting"] for r in d["rows"])]
    ints = [{"setting": k, "fake-quant top-1": v["fake_quant_top1"], "integer top-1": v["integer_top1"],
             "Δ pp": v["delta_pp"], "arg-max agreement": v["argmax_agreement"],
             "isolated mismatch (max over layers)": v["isolated_max_mismatch_fraction"],
             "isolated max LSB": v["isolated_max_lsb"],
             "end-to-end mismatch (max over layers)": v["end_to_end_max_mismatch_fraction"]}
            for k, v in d["integer"].items()]
    acc = [{"layer": r["layer"], "terms": r["terms"], "bits (W4A4 seen)": r["bits_needed"],
            "bits (W4A4 bound)": r["bound_bits"]} for r in d["integer"]["W4A4"]["accumulators"]]
    t = d["throughput"]
    return (f"Test: {d['test']['source']} ({d['test']['n']} images). Calibration: {d['calibration']['source']}.\n"
            f"Config: {d['config']}.\n\nFP top-1: {d['fp_top1']:.2f} %\n\n## RTN top-1 (%)\n\n"
            + markdown_table(table) + f"\n## Integer-only model vs fake-quant (MSE init; top-1 on "
            f"{d['integer_test']['n']} test images, per-layer comparison on the first images)\n\n"
            + markdown_table(ints)
            + "\n## Accumulator widths, W4A4 (signed bits)\n\n" + markdown_table(acc)
            + f"\n## Evaluation throughput (images/s on {t['n_images']} images, median of {t['fp']['n']})\n\n"
            f"FP {t['fp']['median']:.1f}, fake-quant W4A4 {t['fake_quant_w4a4']['median']:.1f}: "
            f"fake-quant is {t['slowdown']:.2f}x slower.\n")


if __name__ == "__main__":
    main()
