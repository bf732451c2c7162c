"""``qmap eval [MODEL] --checkpoint FILE``: top-1 of a checkpoint on CIFAR-10 or an image folder (model, width
and normalisation come from the checkpoint's JSON manifest; MODEL / --model, if given, must agree with it, and
name the model — a registry name or package.module:factory — of a plain state_dict without a manifest).
``qmap eval --run DIR``: top-1 of a finished run's quantized model (``DIR/quantized_model.safetensors``, loaded
with ``qmap.load_quantized``) on the run's own test images, next to the top-1 the run recorded."""

from __future__ import annotations

import json
import sys

from ..data import load_cifar10, load_split, resolve_data_root
from ..data.datasets import SPLITS
from ..errors import ConfigError
from ..evaluate import evaluate
from ..models import load_model
from .common import (
    add_data_option,
    add_device_option,
    add_logging_options,
    add_model_options,
    dataset_source,
    positive_int,
    resolved_device,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1 accuracy of a checkpoint on CIFAR-10",
                              description=__doc__)
    p.add_argument("model_name", nargs="?", metavar="MODEL",
                   help="model name (optional; the manifest names it; same as --model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--checkpoint", help="checkpoint (.safetensors with a .json manifest)")
    src.add_argument("--run", metavar="DIR", help="a finished qmap run folder: evaluate its quantized model")
    p.add_argument("--integer", action="store_true", help="with --run: also evaluate the integer-only model")
    p.add_argument("--split", choices=SPLITS,
                   help="test: full 10k test split; test_exact: the 1017 genuine test images (default: test; "
                        "with --run: the run's split)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per batch (default 500; with --run the run's batch size)")
    add_device_option(p)
    add_data_option(p)
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (top1 as a fraction, n, ...)")
    add_logging_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.run:
        return run_folder(args)
    if args.integer:
        raise ConfigError("--integer needs --run")
    args.split, args.batch_size = args.split or "test", args.batch_size or 500
    if args.model and args.model_name and args.model != args.model_name:
        raise ConfigError(f"MODEL {args.model_name!r} and --model {args.model!r} disagree; give one")
    root, folder, size = dataset_source(args)
    model, manifest = load_model(args.checkpoint, arch=args.model or args.model_name, num_classes=args.num_classes,
                                 mean=args.mean, std=args.std)
    dataset = load_split(root, args.split, folder, size)
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


def run_folder(args) -> int:
    """``qmap eval --run DIR``: the run's quantized model on the run's test images (split and limit from its
    results.json unless given), compared with the top-1 the run recorded."""
    from ..export.quantized import load_run

    run, qm = load_run(args.run)
    data = run["config"]["data"]
    split = args.split or data["test_split"]
    limit = args.limit if args.limit is not None else data.get("test_limit")
    dataset = load_cifar10(resolve_data_root(args.data or data.get("root")), split)
    if limit:
        dataset = dataset.head(limit)
    mean, std = qm.mean_std
    progress = not (args.quiet or args.json) and sys.stderr.isatty()
    models = {"quantized": qm.model} | ({"integer": qm.integer_model().as_module()} if args.integer else {})
    out = {"run": str(args.run), "split": split, "data_source": dataset.source, "data_checksum": dataset.checksum}
    same_data = split == data["test_split"] and limit == data.get("test_limit")
    for name, model in models.items():
        r = evaluate(model, dataset, mean, std, batch_size=args.batch_size or data["batch_size"],
                     device="cpu" if name == "integer" else resolved_device(args.device), progress=progress)
        recorded = run.get("metrics", {}).get(f"top1_{name}") if same_data else None
        out[name] = {**r, "recorded_top1": recorded, "equal": recorded == r["top1"] if recorded is not None else None}
    if args.json:
        print(json.dumps(out))
        return 0
    for name in models:
        r = out[name]
        note = ("" if r["recorded_top1"] is None else
                f"; the run recorded {100 * r['recorded_top1']:.2f} % ({'equal' if r['equal'] else 'DIFFERENT'})")
        print(f"{args.run} {name} model on {split} ({r['n']} images, {dataset.source}): top-1 "
              f"{100 * r['top1']:.2f} %{note}")
    return 0
