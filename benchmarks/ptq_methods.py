"""PTQ methods compared on the reference checkpoint, through ``qmap sweep``: every method of
``configs/sweeps/ptq_methods.yaml`` at W4A4 ... W2A2, each point one ordinary ``qmap run`` executed as a Ray task.

    python benchmarks/ptq_methods.py [SWEEP] [--name ptq_methods] [--out runs/sweeps/<name>]
        [--only AXIS=LEVEL,...] [--set KEY=VALUE] [--address auto|ray://host:port] [--num-cpus N] [--data DIR]

The sweep itself (points, resume, skipping of complete points, the report in the sweep folder) is
``qmap sweep``; this script adds the benchmark record: ``benchmarks/results/<name>.json`` and ``.md`` (the sweep
report, the ranking check DOMR >= QDrop >= BRECQ >= AdaRound >= RTN per bit setting, the sweep's wall time against
the sum of its points) with the three plots in ``benchmarks/results/<name>_plots/``. Rerunning it after an
interruption continues the sweep where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from qmap.commands.sweep import sweep_arguments
from qmap.io import atomic_write_bytes
from qmap.report.results import write_result
from qmap.sweep.execute import run_sweep
from qmap.sweep.report import PLOTS, report_markdown
from qmap.sweep.spec import load_sweep

ORDER = ["rtn", "adaround", "brecq", "qdrop", "domr"]  # the expected ranking, worst to best


def ordering(rep: dict) -> list[str]:
    """Inversions of the expected ranking, per x level (median top-1 over repeats)."""
    notes = []
    for x in rep["x"]:
        top = {s: rep["top1_quantized"][f"{s}|{x}"]["median"] for s in ORDER if f"{s}|{x}" in rep["top1_quantized"]}
        have = [m for m in ORDER if m in top]
        notes += [f"{x}: {hi} ({top[hi]:.2f}) < {lo} ({top[lo]:.2f})"
                  for lo, hi in zip(have, have[1:]) if top[hi] < top[lo]]
    return notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", default="configs/sweeps/ptq_methods.yaml")
    p.add_argument("--name", help="sweep and result name (default: the sweep file's)")
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=LEVEL[,LEVEL...]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--address", help="Ray cluster to join (default: a local instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--data", help="data root (default: $QMAP_DATA)")
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the sweep's progress lines
    sets, only = sweep_arguments(args)
    sweep = load_sweep(args.sweep, sets=sets, only=only, name=args.name)
    out = Path(args.out or f"runs/sweeps/{sweep.name}")
    rep = run_sweep(sweep, out, address=args.address, num_cpus=args.num_cpus, data=args.data)
    plot_dir = f"{sweep.name}_plots"
    for plot in PLOTS:
        atomic_write_bytes(Path(args.out_dir) / plot_dir / plot, (out / "plots" / plot).read_bytes())
    inv = ordering(rep)
    body = (report_markdown(rep, plot_dir=plot_dir)
            + f"\n## Ordering {' ≥ '.join(reversed(ORDER))}\n\n"
            + ("\n".join(f"- inversion: {n}" for n in inv) if inv else "- holds for every setting measured") + "\n")
    write_result(sweep.name, {"sweep_file": args.sweep, "only": only, "set": dict(sets), "report": rep,
                              "ordering_inversions": inv}, body, out_dir=args.out_dir)
    return 1 if rep["counts"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
