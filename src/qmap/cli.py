"""The ``qmap`` command line: one sub-command per stage, plus ``run`` for the whole flow.

Each sub-command lives in ``qmap.commands.<name>`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. The CLI stays thin: parse, call the API, print. Whatever goes wrong
ends as one line on stderr and a documented exit code (:mod:`qmap.errors`), never a traceback; with
``--log-level debug`` an unexpected error also logs its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
import threading

from . import __version__
from .errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, OutputError, QmapError

# Sub-command modules under qmap.commands, in the order --help lists them.
COMMANDS = ["run", "sweep", "compare", "train", "eval", "export", "sim", "data"]
log = logging.getLogger("qmap")


def plain(text: str | None) -> str | None:
    """Docstring markup to plain text for --help: ``x`` -> 'x', :class:`~a.b.C` -> C."""
    if text is None:
        return None
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([\w]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"'\1'", text)


class Parser(argparse.ArgumentParser):
    """argparse with plain-text help and one-line usage errors (exit code 2)."""

    def format_help(self) -> str:
        return plain(super().format_help())

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def exit_code_help() -> str:
    return "exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items())


def build_parser() -> Parser:
    parser = Parser(
        prog="qmap",
        description="Quantize a trained CNN after training to 2-8 bit weights/activations (RTN, alpha-scaling, "
                    "AdaRound, BRECQ, QDrop, OCS, DOMR) and map it onto a systolic-array accelerator: integer "
                    "tensors, RTL test vectors, a cycle-accurate golden model and a Verilog core.",
        epilog=exit_code_help() + ". Run 'qmap COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"qmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def setup_logging(args) -> None:
    """Messages of the ``qmap`` logger to stderr at the level the flags ask for (progress bars are separate)."""
    level = getattr(args, "log_level", None)
    if level is None:
        level = "debug" if getattr(args, "verbose", False) else "warning" if getattr(args, "quiet", False) else "info"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"qmap: {record.levelname.lower()}: {msg}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _terminated(signum, frame):
    """SIGTERM ends a command the way Ctrl-C does: the run folder records the stop, the exit code is 130."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        print("qmap: error: give a command (see 'qmap --help')", file=sys.stderr)
        return 2
    setup_logging(args)
    prog = f"qmap {args.command}"
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None  # `kill`: like Ctrl-C
    try:
        return _run(args, prog)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args, prog: str) -> int:
    try:
        return int(args.func(args) or 0)
    except QmapError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a file qmap had to read or write: name it
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: cannot access{where}: {_one_line(e.strerror or e)}", file=sys.stderr)
        return OutputError.exit_code
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001 - the last line of defence: a bug, reported in one line
        log.debug("traceback of the internal error:", exc_info=True)
        print(f"{prog}: internal error: {type(e).__name__}: {_one_line(e)[:300]} (a bug in qmap; rerun with "
              f"--log-level debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
