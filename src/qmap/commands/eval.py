"""``qmap eval [MODEL] --checkpoint FILE``: top-1 of a checkpoint on CIFAR-10 (model, width and normalisation
come from the checkpoint's JSON manifest; MODEL, if given, must agree with it)."""

from __future__ import annotations

import json
import sys

from ..data import load_cifar10, resolve_data_root
from ..data.datasets import SPLITS
from ..evaluate import evaluate
from ..models import load_model
from .common import add_data_option, add_device_option, add_logging_options, positive_int, resolved_device


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1 accuracy of a checkpoint on CIFAR-10",
                              description=__doc__)
    p.add_argument("model", nargs="?", help="model name (optional; the manifest names it)")
    p.add_argument("-c", "--checkpoint", required=True, help="checkpoint (.safetensors with a .json manifest)")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="test: full 10k test split; test_exact: the 1017 genuine test images (default: test)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    p.add_argument("--batch-size", type=positive_int, default=500, metavar="N", help="images per batch (default 500)")
    add_device_option(p)
    add_data_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (top1 as a fraction, n, ...)")
    add_logging_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    model, manifest = load_model(args.checkpoint, arch=args.model)
    dataset = load_cifar10(resolve_data_root(args.data), args.split)
    if args.limit is not None:
        dataset = dataset.head(args.limit)
    mean, std = manifest.mean_std()
    result = evaluate(model, dataset, mean, std, batch_size=args.batch_size, device=resolved_device(args.device),
                      progress=not (args.quiet or args.json) and sys.stderr.isatty())
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "arch": manifest.arch, "width": manifest.width,
                          "split": args.split, "data_source": dataset.source, "data_checksum": dataset.checksum,
                          **result}))
    else:
        print(f"{manifest.arch} w{manifest.width:g} on {args.split} ({result['n']} images, {dataset.source}): "
              f"top-1 {100 * result['top1']:.2f} %  ({result['images_per_s']:.0f} images/s)")
    return 0
