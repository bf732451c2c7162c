"""Foundation figures: reference-checkpoint accuracy, BN-fusion error, JPEG-mirror decode/cache times, FP eval speed.

Run: ``QMAP_DATA=../shared/data python benchmarks/foundation.py`` → ``benchmarks/results/foundation.{json,md}``.
Decode timing uses a fresh temporary cache folder, so it measures a cold decode whatever caches exist.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from qmap.data import load_cifar10, resolve_data_root, to_tensor
from qmap.evaluate import evaluate
from qmap.models import build_model, load_model, model_names
from qmap.models.registry import CIFAR10_MEAN, CIFAR10_STD
from qmap.nn.fuse import fuse_bn
from qmap.report.results import markdown_table, median_of, write_result

REFERENCE = "models/vgg16_bn_sq8_w0.5.safetensors"


def fusion_error(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max |fused(x) − model(x)| / max |model(x)| in eval mode."""
    with torch.no_grad():
        ref = model.eval()(x)
        return float((fuse_bn(model)(x) - ref).abs().max() / ref.abs().max())


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", help="data root (default: $QMAP_DATA)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = resolve_data_root(args.data)
    model, manifest = load_model(root / REFERENCE)
    mean, std = manifest.mean_std()

    with tempfile.TemporaryDirectory() as cache:
        test, cold = timed(lambda: load_cifar10(root, "test", cache_dir=cache))  # decodes train+test, caches both
        warm_test = [timed(lambda: load_cifar10(root, "test", cache_dir=cache))[1] for _ in range(args.repeats)]
        warm_train = [timed(lambda: load_cifar10(root, "train", cache_dir=cache))[1] for _ in range(args.repeats)]
    exact = load_cifar10(root, "test_exact")

    acc_jpeg = evaluate(model, test, mean, std, device="cpu", progress=False)
    acc_exact = evaluate(model, exact, mean, std, device="cpu", progress=False)
    speed_set = test.subset(range(2000))
    speeds = [evaluate(model, speed_set, mean, std, device="cpu", progress=False)["images_per_s"]
              for _ in range(args.repeats)]

    real = to_tensor(exact.images, mean, std)
    fusion = [{"model": "reference vgg16_bn_sq8 w0.5", "inputs": "1017 genuine test images",
               "max_rel_error": fusion_error(model, real)}]
    gen = torch.Generator().manual_seed(0)
    for name in model_names():
        torch.manual_seed(0)
        m = build_model(name, width=0.5)
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):  # non-trivial BN statistics
            bn.running_mean.copy_(0.2 * torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(bn.num_features, generator=gen))
        fusion.append({"model": f"{name} w0.5 (random init, random BN stats)", "inputs": "64 random N(0,1)",
                       "max_rel_error": fusion_error(m, torch.randn(64, 3, 32, 32, generator=gen))})
        fusion.append({"model": f"{name} w0.5 (random init, random BN stats)", "inputs": "64 genuine test images",
                       "max_rel_error": fusion_error(m, to_tensor(exact.images[:64], CIFAR10_MEAN, CIFAR10_STD))})

    data = {
        "reference_checkpoint": str(root / REFERENCE),
        "accuracy": {"jpeg_test_10k": acc_jpeg["top1"], "exact_test_1017": acc_exact["top1"],
                     "manifest_jpeg": manifest.extra.get("test_acc_jpeg_q75"),
                     "manifest_exact": manifest.extra.get("test_acc_exact_1017")},
        "fusion": fusion,
        "max_fusion_rel_error": max(f["max_rel_error"] for f in fusion),
        "jpeg_mirror": {"cold_decode_and_cache_s": cold, "cached_load_test_s": median_of(warm_test),
                        "cached_load_train_s": median_of(warm_train), "test_source": test.source,
                        "test_checksum": test.checksum},
        "fp_eval_images_per_s": median_of(speeds) | {"images": len(speed_set), "batch_size": 500,
                                                    "threads": torch.get_num_threads()},
        "load_average_at_end": os.getloadavg(),
    }
    acc_rows = [{"split": "JPEG-q75 test (10,000)", "top-1 %": 100 * acc_jpeg["top1"], "manifest %": 87.83},
                {"split": "genuine test_batch[:1017]", "top-1 %": 100 * acc_exact["top1"], "manifest %": 89.38}]
    time_rows = [{"step": "decode + cache JPEG mirror (60k, cold)", "seconds": cold},
                 {"step": f"cached load test (median of {args.repeats})", "seconds": median_of(warm_test)["median"]},
                 {"step": f"cached load train (median of {args.repeats})", "seconds": median_of(warm_train)["median"]}]
    body = ("## Reference checkpoint (vgg16_bn_sq8 w0.5)\n\n" + markdown_table(acc_rows)
            + "\n## Conv-BN fusion (max |fused − unfused| / max |unfused|, eval mode)\n\n" + markdown_table(fusion)
            + "\n## JPEG mirror decode / cache\n\n" + markdown_table(time_rows)
            + f"\n## FP evaluation speed (CPU, {torch.get_num_threads()} threads, batch 500)\n\n"
            + f"{data['fp_eval_images_per_s']['median']:.0f} images/s (median of {args.repeats} runs over "
            + f"{len(speed_set)} images; min {min(speeds):.0f}, max {max(speeds):.0f}). Load average at the end: "
            + f"{', '.join(f'{v:.1f}' for v in data['load_average_at_end'])} (the CPU is shared).\n")
    jp, mp = write_result("foundation", data, body, out_dir=Path(__file__).parent / "results")
    print(mp.read_text())


if __name__ == "__main__":
    main()
