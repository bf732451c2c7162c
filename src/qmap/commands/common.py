"""Options shared by the sub-commands, so the same thing has the same name everywhere:
``--data DIR``, ``--device``, ``-o/--out``, ``-q/--quiet``, ``-v/--verbose``, ``--log-level``,
``--calib-size N``, ``--batch-size N``, the model/data options (``--model``, ``--input-shape``, ``--mean``,
``--std``, ``--num-classes``, ``--image-folder``); and argument types that refuse bad values with one line."""

from __future__ import annotations

import argparse
import re

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_logging_options(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` (no progress bars, warnings and errors only), ``-v/--verbose`` (debug messages) and
    ``--log-level LEVEL`` (wins over both)."""
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or stage messages")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages (same as --log-level debug)")
    g.add_argument("--log-level", choices=LOG_LEVELS, help="message level on stderr (default: info)")


def add_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="data root (default: $QMAP_DATA, then 'data:' in qmap.yaml)")


def add_model_options(p: argparse.ArgumentParser, model_flag: bool = True) -> None:
    """Your own model and data: ``--model NAME|package.module:factory``, ``--num-classes``, ``--input-shape
    3,H,W``, ``--mean R,G,B``, ``--std R,G,B`` (override or replace the checkpoint's manifest) and
    ``--image-folder DIR`` (an image-folder dataset instead of CIFAR-10)."""
    g = p.add_argument_group("your own model and data (when no manifest beside the checkpoint says it)")
    if model_flag:
        g.add_argument("--model", metavar="NAME", help="registry model or package.module:factory returning an "
                                                       "nn.Module (the module importable, e.g. via PYTHONPATH)")
    g.add_argument("--num-classes", type=positive_int, metavar="N", help="output classes of the model")
    g.add_argument("--input-shape", type=input_shape, metavar="3,H,W",
                   help="model input; images of other sizes are resized to H x W (default: the dataset's)")
    g.add_argument("--mean", type=rgb("mean"), metavar="R,G,B", help="input normalisation mean (0..1 pixels)")
    g.add_argument("--std", type=rgb("std", positive=True), metavar="R,G,B", help="input normalisation std")
    g.add_argument("--image-folder", metavar="DIR",
                   help="image-folder dataset DIR/{train,val|test}/<class>/*.png|jpg (or a .tar of it) instead "
                        "of CIFAR-10")


def dataset_source(args):
    """``(data root, image folder, image size (H, W))`` from ``--data``, ``--image-folder`` and ``--input-shape``:
    the CIFAR-10 data root is resolved (and must exist) only when no image folder is given."""
    from ..data import resolve_data_root

    folder = args.image_folder
    size = tuple(args.input_shape[1:]) if args.input_shape else None
    return (resolve_data_root(args.data) if folder is None else None), folder, size


MODEL_KEYS = (("model.arch", "model"), ("model.num_classes", "num_classes"), ("model.input_shape", "input_shape"),
              ("model.mean", "mean"), ("model.std", "std"), ("data.folder", "image_folder"))


def model_overrides(args) -> dict[str, object]:
    """The config keys ``add_model_options``' flags set (only those given)."""
    return {key: getattr(args, attr) for key, attr in MODEL_KEYS if getattr(args, attr, None) is not None}


def _numbers(text: str, count: int, kind, what: str) -> list:
    parts = [t.strip() for t in text.split(",")]
    try:
        values = [kind(t) for t in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated {what}, got {text!r}") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated {what}, got {len(values)}")
    return values


def input_shape(text: str) -> list[int]:
    """``3,H,W``: an RGB input of H x W pixels (1..4096 each)."""
    c, h, w = _numbers(text, 3, int, "integers (3,H,W)")
    if c != 3 or not (1 <= h <= 4096 and 1 <= w <= 4096):
        raise argparse.ArgumentTypeError(f"expected 3,H,W with H and W in 1..4096 (RGB images), got {text!r}")
    return [c, h, w]


def rgb(what: str, positive: bool = False):
    """An argparse type: three finite numbers (> 0 with ``positive``)."""
    import math

    def parse(text: str) -> list[float]:
        values = _numbers(text, 3, float, "numbers (R,G,B)")
        if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise argparse.ArgumentTypeError(f"expected 3 finite{' positive' if positive else ''} numbers, "
                                             f"got {text!r}")
        return values

    parse.__name__ = what
    return parse


def parse_pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments (``--set``, ``--only``) as (key, raw value) pairs; a malformed one is one line."""
    from ..errors import ConfigError

    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), value))
    return pairs


def add_device_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", type=device, default=default,
                   help="auto | cpu | cuda | cuda:N (default: cuda when available)")


def int_in(lo: int, hi: int | None = None, what: str = "an integer"):
    """An argparse type: an integer in ``lo..hi`` (``hi=None``: no upper bound), else a one-line usage error."""
    allowed = f"{what} >= {lo}" if hi is None else f"{what} in {lo}..{hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = int_in(1)
bits = int_in(2, 8, "a bit width")


def device(text: str) -> str:
    """A torch device name that exists here (``auto`` = cuda when available, else cpu)."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} requested but CUDA is not available; use cpu")
    return text


def resolved_device(name: str | None) -> str:
    """``auto``/None → ``cuda`` when available, else ``cpu``."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_out_file(path: str, suffixes: tuple[str, ...], flag: str = "--out"):
    """Refuse, before any work, an output file path that cannot be written: a folder, a wrong suffix, a parent
    that is a file or not writable. Returns the path."""
    from pathlib import Path

    from ..errors import ConfigError, OutputError
    from ..runfolder import writable

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if p.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {p}: the file name must end in {' or '.join(suffixes)}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {p}: {parent} is not a folder")
    if not writable(parent):
        raise OutputError(f"{flag} {p}: {parent} is not writable")
    return p


def refuse_existing(*paths, flag: str = "--out", note: str = "") -> None:
    """Refuse, with one line, to replace a file the user already has (the first of ``paths`` that exists):
    a command replaces an existing output only when given ``--overwrite``."""
    from pathlib import Path

    from ..errors import ConfigError

    for p in map(Path, paths):
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{flag} {p} already exists{note}: pass --overwrite to replace it, or pick another "
                              f"{flag}")


def check_out_dir_free(path: str) -> None:
    """An output folder for generated files: absent, or an empty folder we may write."""
    from pathlib import Path

    from ..errors import ConfigError, OutputError
    from ..runfolder import writable

    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"--out {p} exists and is not a folder")
        if any(p.iterdir()):
            raise ConfigError(f"--out {p} is not empty; give a new or empty folder")
        if not writable(p):
            raise OutputError(f"--out {p} is not writable")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not writable(parent):
        raise OutputError(f"--out {p}: cannot create it under {parent}")
