"""OMR vs OCS on the reference checkpoint (issue 9 part B).

1. Equivalence on real data: RTN W4A{2,3,4}, then full OMR (bias form); max |logit difference| between the
   OMR model and the same-step quantizer clipped at 2·X_clip (``omr_reference``), float64.
2. Selective OMR at budgets {0.05, 0.1, 0.25, 1.0} (and full OMR): extra channels, extra MACs, fraction, top-1.
3. Top-1 of RTN, RTN+OMR, OCS (expand ratio 0.02; weight / activation splitting) at W4A2 and W4A4, no
   reconstruction. First/last layer at 8 bits (QuantConfig default).
4. The seed's Figure 1 on the input of ``--plot-layer``: plain b-bit, OCS and OMR levels over its histogram.

    python benchmarks/omr_ocs.py --data $QMAP_DATA [--calib 256] [--split test_exact|test]

(The defaults, 1017 genuine test images and 256 calibration images, keep a 2-core CPU run under ~30 min.)
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.evaluate import evaluate
from qmap.methods import get_method
from qmap.methods.channels import consumer_inputs, layer_macs
from qmap.methods.omr import apply_omr, float_mode, omr_reference
from qmap.models import load_model
from qmap.quant import QuantConfig
from qmap.report.plots_outliers import plot_outlier_levels
from qmap.report.results import markdown_table, write_result

CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"
RESULTS = Path(__file__).parent / "results"
BUDGETS = (0.05, 0.1, 0.25, 1.0)


def rtn(model, calib, w_bits, a_bits):
    return get_method("rtn")(model, calib, QuantConfig(w_bits=w_bits, a_bits=a_bits)).model


def equivalence(rtn_model, calib, images, bits):
    q = copy.deepcopy(rtn_model).double()
    plain = copy.deepcopy(q)
    report = apply_omr(q, selective=False, calib=calib.double())
    ref = omr_reference(plain, report)
    with torch.no_grad():
        x = images.double()
        out, want, base = q(x), ref(x), plain(x)
    return {"a_bits": bits, "images": len(x), "max_abs_diff_omr_vs_wide": float((out - want).abs().max()),
            "max_abs_diff_plain_vs_wide": float((base - want).abs().max()),
            "max_abs_logit": float(want.abs().max()), "extra_channels": report["extra_channels"]}


def total_macs(qmodel, calib):
    return sum(v["macs"] for v in layer_macs(qmodel, calib[:1]).values())


def top1(model, test, man):
    return evaluate(model, test, man.normalize_mean, man.normalize_std, progress=False)["top1"]


def plot_layer(q, ocs, calib, layer, bits, path):
    """Histogram of ``layer``'s FP input on the calibration set with the RTN step ``q`` and the OCS step."""
    with float_mode(q):
        values = torch.cat([b[layer].flatten() for b in consumer_inputs(q, [layer], calib)]).cpu().numpy()
    step = float(q.get_submodule(layer).input_quantizer.scale)
    ocs_step = float(ocs.get_submodule(layer).input_quantizer.scale)
    plot_outlier_levels(values, step, bits, ocs_step, path, title=f"input of {layer}, {bits}-bit activations")
    return {"layer": layer, "a_bits": bits, "step": step, "ocs_step": ocs_step, "max": float(values.max()),
            "clip": step * (2 ** bits - 1), "fraction_clipped": float((values > step * (2 ** bits - 1)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default $QMAP_DATA)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images from train_exact")
    ap.add_argument("--split", default="test_exact", choices=["test", "test_exact"])
    ap.add_argument("--equiv-images", type=int, default=256)
    ap.add_argument("--plot-layer", default="features.30")
    ap.add_argument("--plot-bits", type=int, default=2, choices=[2, 4])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.data:
        ap.error("give --data or set QMAP_DATA")
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    model, man = load_model(root / CHECKPOINT)
    calib = to_tensor(calibration_set(load_cifar10(root, "train_exact"), args.calib, seed=0).images,
                      man.normalize_mean, man.normalize_std)
    test = load_cifar10(root, args.split)
    equiv_x = to_tensor(load_cifar10(root, "test_exact").images[:args.equiv_images], man.normalize_mean,
                        man.normalize_std)

    rtn_models = {a: rtn(model, calib, 4, a) for a in (2, 3, 4)}
    equiv = [equivalence(rtn_models[b], calib, equiv_x, b) for b in (2, 3, 4)]
    rows, budget_rows, ocs_models = [], [], {}
    for w, a in ((4, 2), (4, 4)):
        base = rtn_models[a]
        rows.append({"config": f"W{w}A{a}", "method": "RTN", "top1": top1(base, test, man), "extra_macs_%": 0.0})
        for budget in (*BUDGETS, None):
            q = copy.deepcopy(base)
            rep = apply_omr(q, selective=budget is not None, budget=budget or 1.0, calib=calib)
            acc = top1(q, test, man)
            label = "RTN+OMR full" if budget is None else f"RTN+OMR selective {budget:g}"
            budget_rows.append({"config": f"W{w}A{a}", "budget": "full" if budget is None else budget,
                                "extra_channels": rep["extra_channels"], "extra_macs": rep["extra_macs"],
                                "extra_macs_%": 100 * rep["fraction"], "top1": acc,
                                "per_pair": [{k: r[k] for k in ("producer", "consumer", "form", "channels",
                                                                "candidates", "extra_channels", "extra_macs")}
                                             for r in rep["pairs"]]})
            if budget in (None, 1.0, 0.1):
                rows.append({"config": f"W{w}A{a}", "method": label, "top1": acc,
                             "extra_macs_%": 100 * rep["fraction"], "extra_channels": rep["extra_channels"]})
        for target in ("weight", "activation"):
            res = get_method("ocs")(model, calib, QuantConfig(w_bits=w, a_bits=a), expand_ratio=0.02, target=target)
            ocs_models[(a, target)] = res.model
            rows.append({"config": f"W{w}A{a}", "method": f"OCS {target} 0.02", "top1": top1(res.model, test, man),
                         "extra_channels": res.report["extra_channels"],
                         "extra_macs_%": 100 * (total_macs(res.model, calib) / total_macs(base, calib) - 1)})
    figure = plot_layer(rtn_models[args.plot_bits], ocs_models[(args.plot_bits, "activation")], calib,
                        args.plot_layer, args.plot_bits, RESULTS / "omr_ocs_levels.png")

    data = {"checkpoint": CHECKPOINT, "split": args.split, "test_images": len(test), "calib_images": args.calib,
            "equivalence": equiv, "accuracy": rows, "selective": budget_rows, "figure": figure}
    body = ("## OMR equivalence on real data (float64, RTN W4, full OMR vs same-step quantizer clipped at "
            f"2·X_clip, {args.equiv_images} genuine test images)\n\n" + markdown_table(equiv)
            + f"\n## Top-1 on {args.split} ({len(test)} images), calibration {args.calib} train_exact images\n\n"
            + markdown_table(rows, ["config", "method", "top1", "extra_macs_%", "extra_channels"])
            + "\n## Selective OMR: cost per budget (fraction of each pair's channels)\n\n"
            + markdown_table(budget_rows, ["config", "budget", "extra_channels", "extra_macs", "extra_macs_%", "top1"])
            + f"\n## Figure 1\n\n![levels](omr_ocs_levels.png)\n\n{markdown_table([figure])}")
    write_result("omr_ocs", data, body, out_dir=RESULTS, seed=0)


if __name__ == "__main__":
    main()
