"""``qmap train MODEL``: train a registry model (or your own, ``package.module:factory``) from scratch on CIFAR-10
or an image folder and write a safetensors checkpoint with its JSON manifest (test accuracy, data checksum, git
sha, seed, normalisation). ``--resume`` continues an interrupted run from ``<out>.state.pt`` (saved after every
epoch)."""

from __future__ import annotations

import shlex
import sys

import torch

from ..data import load_cifar10, load_split
from ..errors import ConfigError
from ..models import model_names
from ..models.checkpoint import manifest_path
from ..models.registry import get_entry
from ..train import TrainConfig, state_path, train
from .common import (
    add_data_option,
    add_device_option,
    add_logging_options,
    add_model_options,
    check_out_file,
    dataset_source,
    positive_int,
    refuse_existing,
    resolved_device,
)


def register(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a model from scratch on CIFAR-10 or an image folder",
                              description=__doc__)
    p.add_argument("model", help=f"{', '.join(model_names())}, or package.module:factory")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("-o", "--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="one-cycle peak / cosine start learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default=d.schedule)
    p.add_argument("--warmup", type=float, default=d.warmup, help="one-cycle warm-up fraction")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--pad-mode", choices=["reflect", "zero"], default=d.pad_mode)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--fp16", action="store_true", help="save the weights as float16 (half the file size)")
    p.add_argument("--train-split", default="train", choices=["train", "train_exact"])
    p.add_argument("--resume", action="store_true", help="continue from <out>.state.pt if it exists")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out checkpoint and manifest (refused without it, unless --resume "
                        "continues the training state saved beside it)")
    add_device_option(p)
    add_data_option(p)
    add_model_options(p, model_flag=False)
    add_logging_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = check_out_file(args.out, (".safetensors",))
    if not (args.overwrite or (args.resume and state_path(out).is_file())):
        refuse_existing(out, manifest_path(out), note=" (with no training state beside it to --resume)"
                        if args.resume else "")
    if not 0 < args.width <= 16:
        raise ConfigError(f"--width must be in (0, 16], got {args.width}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing,
                      pad_mode=args.pad_mode, seed=args.seed, channels_last=not args.no_channels_last,
                      amp=not args.no_amp)
    entry = get_entry(args.model)  # an unknown name or an unimportable factory: one line, before any data
    if args.num_classes is not None:
        raise ConfigError("qmap train takes the class count from the dataset; drop --num-classes")
    if args.image_folder is not None and args.train_split != "train":
        raise ConfigError(f"--train-split {args.train_split} is a CIFAR-10 split; an image folder has train")
    root, folder, size = dataset_source(args)
    train_set, test_set = (load_split(root, s, folder, size) for s in (args.train_split, "test"))
    extra_tests = {"test_exact": load_cifar10(root, "test_exact")} if folder is None else {}
    result = train(args.model, args.width, train_set, test_set, cfg, out, resume=args.resume,
                   device=resolved_device(args.device), progress=not args.quiet,
                   save_dtype=torch.float16 if args.fp16 else None, extra_tests=extra_tests,
                   manifest_extra={"command": shlex.join(["qmap", *sys.argv[1:]])},
                   normalization=(tuple(args.mean or entry.mean), tuple(args.std or entry.std)))
    print(f"{args.model} w{args.width:g}: test top-1 {100 * result['test_top1']:.2f} % "
          f"({result['n_test']} images) -> {out}")
    return 0
