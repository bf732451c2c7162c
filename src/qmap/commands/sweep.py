"""'qmap sweep': run a grid of 'qmap run' points on Ray (a local instance or a cluster) and report across them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import parse_value
from ..errors import EXIT_INTERNAL
from .common import add_data_option, add_logging_options, parse_pairs, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="a grid of qmap runs (methods x bit widths x seeds ...) as Ray tasks, with a report",
        description="Expand SWEEP (a base run config plus axes, see docs/sweep.md) into points and run each as an "
                    "ordinary `qmap run` into OUT/points/<point>/, as Ray tasks: a local Ray instance with every "
                    "CPU of this machine, or the cluster at --address. Every point is checked before any runs. "
                    "Points already complete with the same config are skipped, unfinished ones are resumed. "
                    "Writes OUT/sweep.json, OUT/report.md and OUT/plots/ after every point. Exit status: 0 every "
                    "point complete; 2 bad sweep file or option, or Ray not installed (pip install 'qmap[ray]'); "
                    "otherwise the exit code of the first failed point's error (qmap run's codes; 70 when its "
                    "worker failed), with every failed point's error in the report.")
    p.add_argument("sweep", help="sweep file (YAML or JSON)")
    p.add_argument("-o", "--out", help="sweep folder (default: runs/sweeps/<sweep name>)")
    p.add_argument("--address", help="join this Ray cluster (auto, or ray://host:port) instead of starting one")
    p.add_argument("--num-cpus", type=positive_int, metavar="N",
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=LEVEL[,LEVEL...]",
                   help="run only these levels of an axis, e.g. --only method=rtn,domr (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every point's config, e.g. --set data.test_limit=1000")
    add_data_option(p)
    p.add_argument("--overwrite", action="store_true",
                   help="rerun points whose folder holds a run of a different config (otherwise refused)")
    p.add_argument("--list", action="store_true", help="print the points and their state; run nothing")
    p.add_argument("--json", action="store_true", help="print the sweep report (sweep.json) on stdout")
    add_logging_options(p)
    p.set_defaults(func=main)


def sweep_arguments(args) -> tuple[list, dict]:
    """(``--set`` overrides with parsed values, ``--only`` levels per axis)."""
    sets = [(k, parse_value(v, f"--set {k}")) for k, v in parse_pairs(args.set, "--set")]
    only = {k: [lab.strip() for lab in v.split(",") if lab.strip()] for k, v in parse_pairs(args.only, "--only")}
    return sets, only


def main(args) -> int:
    from ..sweep.execute import plan, run_sweep
    from ..sweep.spec import load_sweep

    sets, only = sweep_arguments(args)
    sweep = load_sweep(args.sweep, sets=sets, only=only)
    out = args.out or f"runs/sweeps/{sweep.name}"
    if args.list:
        for p in plan(sweep, Path(out).resolve(), args.data, args.overwrite):
            print(f"{p.point.name}\t{p.state}\t{p.folder}")
        return 0
    rep = run_sweep(sweep, out, address=args.address, num_cpus=args.num_cpus, data=args.data,
                    overwrite=args.overwrite, quiet=args.quiet)
    if args.json:
        json.dump(rep, sys.stdout)
        print()
    elif not args.quiet:
        last = rep["invocations"][-1]
        c = rep["counts"]
        print(f"{c['complete']}/{len(rep['points'])} points complete, {c['failed']} failed; wall {last['wall_s']:.0f} s"
              f" for {last['points_run']} points run (sum of their run times {last['points_wall_s_sum']:.0f} s) → "
              f"{out}/report.md")
    failed = [r for r in rep["points"] if r["status"] == "failed"]
    return failed[0].get("exit_code", EXIT_INTERNAL) if failed else 0
