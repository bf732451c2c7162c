"""``qmap data info | prepare``: show which CIFAR-10 sources a data root holds; decode and cache them
(``--download`` fetches the official pickles when no source is found)."""

from __future__ import annotations

import time

from ..data import describe_sources, load_cifar10, resolve_data_root
from ..data.cache import default_cache_dir
from .common import add_data_option, add_logging_options


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="show / prepare the datasets", description=__doc__)
    p.add_argument("action", choices=["info", "prepare"])
    add_data_option(p)
    p.add_argument("--download", action="store_true", help="prepare: download the official pickles if needed")
    add_logging_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    root = resolve_data_root(args.data)
    print(f"data root: {root}\ncache: {default_cache_dir(root)}")
    for s in describe_sources(root):
        print(f"  {s['source']:<40} {s['status']:<10} {s['path']}")
    if args.action == "prepare":
        for split in ("train", "test"):
            start = time.perf_counter()
            ds = load_cifar10(root, split, download=args.download)
            print(f"{split}: {len(ds)} images from {ds.source} in {time.perf_counter() - start:.1f} s "
                  f"(sha256 {ds.checksum[:16]}…)")
    return 0
