"""'qmap compare': a table (and optionally a plot) across finished run folders."""

from __future__ import annotations

import json
import logging
import sys

from .common import add_logging_options, check_out_file

log = logging.getLogger("qmap")


def register(sub) -> None:
    p = sub.add_parser("compare", help="table and plot of several finished runs",
                       description="Read results.json of each run folder and print one row per run: method, bit "
                                   "widths, top-1 FP / quantized / integer, accuracy gap, quantization time, cycles. "
                                   "Warns when the runs differ in test split, number of test images or model.")
    p.add_argument("runs", nargs="+", help="run folders (outputs of qmap run) or sweep folders (of qmap sweep)")
    p.add_argument("-o", "--out", "--plot", dest="plot", metavar="FILE",
                   help="write a chart of each run's top-1 change vs FP here (.png, .svg or .pdf)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_logging_options(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from ..report.compare import comparability_warnings, compare_runs, comparison_markdown, plot_comparison

    if args.plot:
        check_out_file(args.plot, (".png", ".svg", ".pdf"), flag="--out")
    rows = compare_runs(args.runs)
    for warning in comparability_warnings(rows):
        log.warning(warning)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print(comparison_markdown(rows), end="")
    if args.plot:
        plot_comparison(rows, args.plot)
    return 0
