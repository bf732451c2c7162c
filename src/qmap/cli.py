"""The ``qmap`` command line: one sub-command per stage, plus ``run`` for the whole flow.

Each sub-command lives in ``qmap.commands.<name>`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. The CLI stays thin: parse, call the API, print. User errors
(:class:`qmap.errors.QmapError`) print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import QmapError

# Sub-command modules under qmap.commands, in the order --help lists them.
COMMANDS = ["run", "sweep", "compare", "train", "eval", "export", "sim", "data"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qmap",
        description="Quantize a trained CNN after training to 2-8 bit weights/activations (RTN, alpha-scaling, "
                    "AdaRound, BRECQ, QDrop, OCS, DOMR) and map it onto a systolic-array accelerator: integer "
                    "tensors, RTL test vectors, a cycle-accurate golden model and a Verilog core.",
    )
    parser.add_argument("--version", action="version", version=f"qmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QmapError as e:
        print(f"qmap {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"qmap {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
