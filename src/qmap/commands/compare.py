"""``qmap compare``: a table (and optionally a plot) across finished run folders."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("compare", help="table and plot of several finished runs",
                       description="Read results.json of each run folder and print one row per run: method, bit "
                                   "widths, top-1 FP / quantized / integer, accuracy gap, quantization time, cycles.")
    p.add_argument("runs", nargs="+", help="run folders (outputs of qmap run) or sweep folders (of qmap sweep)")
    p.add_argument("--plot", help="write a bar chart PNG here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..report.compare import compare_runs, comparison_markdown, plot_comparison

    rows = compare_runs(args.runs)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print(comparison_markdown(rows), end="")
    if args.plot:
        plot_comparison(rows, args.plot)
    return 0
