"""Per-layer sensitivity: the top-1 cost of putting one layer's weights, or its input activations, at low bits.

    python benchmarks/layer_sensitivity.py [--data DIR] [--bits 4] [--base 8] [--test-limit 3000]

RTN with per-channel MSE-initialised weights; every layer at W``base``A``base`` except the one under test,
which gets W``bits``A``base`` (weight row) or W``base``A``bits`` (activation row). First and last layer are
skipped (they stay 8-bit in every setting of this project). Writes ``benchmarks/results/layer_sensitivity.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from qmap.data import calibration_set, load_cifar10, resolve_data_root, to_tensor
from qmap.evaluate import evaluate
from qmap.methods import get_method
from qmap.models import load_model
from qmap.quant import QuantConfig
from qmap.report.results import markdown_table, write_result

CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data root (default: $QMAP_DATA)")
    p.add_argument("--checkpoint", help=f"checkpoint (default: DATA/{CHECKPOINT})")
    p.add_argument("--bits", type=int, default=4, help="bit width of the layer under test")
    p.add_argument("--base", type=int, default=8, help="bit width of every other layer")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--test-limit", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    root = resolve_data_root(args.data)
    model, manifest = load_model(args.checkpoint or root / CHECKPOINT)
    mean, std = manifest.mean_std()
    calib = to_tensor(calibration_set(load_cifar10(root, "train"), args.calib, seed=args.seed).images, mean, std)
    test = load_cifar10(root, "test")
    test = test.head(args.test_limit)

    def top1(layer_bits: dict) -> float:
        qcfg = QuantConfig(w_bits=args.base, a_bits=args.base, layer_bits=layer_bits)
        qmodel = get_method("rtn")(model, calib, qcfg).model
        return 100 * evaluate(qmodel, test, mean, std, batch_size=500, progress=False)["top1"]

    base = top1({})
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:-1]
    rows = []
    for name in names:
        w = top1({name: (args.bits, args.base)})
        a = top1({name: (args.base, args.bits)})
        rows.append({"layer": name, f"W{args.bits} top-1 %": w, f"W{args.bits} cost pp": base - w,
                     f"A{args.bits} top-1 %": a, f"A{args.bits} cost pp": base - a})
        print(rows[-1], flush=True)
    body = (f"RTN, every layer W{args.base}A{args.base} (top-1 {base:.2f} % on {len(test)} test images) except "
            f"the layer of the row at {args.bits} bits (weights, or its input activations).\n\n"
            f"{markdown_table(rows)}")
    write_result("layer_sensitivity", {"options": vars(args), "base_top1": base, "n_test": len(test),
                                       "rows": rows}, body, out_dir=args.out_dir, seed=args.seed)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
