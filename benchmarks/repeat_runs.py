"""Repeat one ``qmap run`` config over several seeds: the spread of its accuracy and its end-to-end wall time.

    python benchmarks/repeat_runs.py configs/domr_w4a4.yaml [--seeds 0,1,2] [--data DIR] [--resume]

Seed k sets ``seed``, ``data.calib_seed`` (which training images calibrate) and, for the reconstruction methods,
``method.options.seed`` (batch order, QDrop masks) to k. Every run is the unchanged ``qmap run`` command in a
child process, timed from start to exit (loading, FP and quantized evaluation on the test set, the integer model
and the hardware stages included). Writes ``benchmarks/results/runs_<config name>.json`` and ``.md`` after every
run, with the median, min and max top-1 and wall time; ``--resume`` keeps the runs of an earlier invocation made
with the same config file contents and ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qmap.config import load_config
from qmap.report.results import markdown_table, write_result
from qmap.report.verdict import merge_group_passes

RECON_METHODS = ("adaround", "brecq", "qdrop", "domr")


def run_once(config: Path, seed: int, method: str, data: str | None, work: Path, extra: list[str]) -> dict:
    """One ``qmap run`` with every seed set to ``seed``; its results.json plus the wall time of the command."""
    out = work / f"seed-{seed}"
    sets = [*extra, f"seed={seed}", f"data.calib_seed={seed}"]
    if method in RECON_METHODS:
        sets.append(f"method.options.seed={seed}")
    cmd = [sys.executable, "-m", "qmap", "run", str(config), "--out", str(out), "--overwrite", "--quiet"]
    cmd += [a for s in sets for a in ("--set", s)] + (["--data", data] if data else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: qmap run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    m, rep = res["metrics"], res.get("method_report", {})
    row = {"seed": seed, "wall_seconds": wall, "top1_fp": 100 * m["top1_fp"],
           "top1_quantized": 100 * m["top1_quantized"], "top1_integer": 100 * m.get("top1_integer", float("nan")),
           "method_seconds": rep.get("seconds"), "timings": res["timings"],
           "peak_rss_mb": res["peak_rss_bytes"] / 2**20, "calib_sha256": res["provenance"]["calib_sha256"]}
    if rep.get("blocks"):
        row["recon_error_before"] = sum(b["error_before"] for b in rep["blocks"])
        row["recon_error_after"] = sum(b["error_after"] for b in rep["blocks"])
    if rep.get("omr"):
        row["omr_extra_mac_fraction"] = rep["omr"]["fraction"]
    hw = res.get("hardware") or {}
    row["hardware"] = [{k: v for k, v in layer.items() if k != "folder"} for layer in hw.get("layers", [])]
    return row


def summary(rows: list[dict]) -> dict:
    """Median / min / max of the quantities a reader compares across seeds."""
    out = {}
    for key in ("top1_quantized", "top1_integer", "wall_seconds", "method_seconds"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    fp = rows[0]["top1_fp"]
    out["top1_fp"] = fp
    out["median_gap_pp"] = fp - out["top1_quantized"]["median"]
    return out


def markdown(config: str, rows: list[dict], s: dict) -> str:
    table = markdown_table([
        {"seed": r["seed"], "top-1 % (fake-quant)": f"{r['top1_quantized']:.2f}",
         "top-1 % (integer)": f"{r['top1_integer']:.2f}",
         "Δ before → after": (f"{r['recon_error_before']:.1f} → {r['recon_error_after']:.1f}"
                              if "recon_error_before" in r else "—"),
         "method s": f"{r['method_seconds']:.0f}" if r.get("method_seconds") else "—",
         "whole run s": f"{r['wall_seconds']:.0f}", "peak RSS MB": f"{r['peak_rss_mb']:.0f}"} for r in rows])
    q, w = s["top1_quantized"], s["wall_seconds"]
    hw = [{"seed": r["seed"], "layer": h["layer"], "image": h["image"], "passes": h["passes"],
           "input offset": h.get("input_offset", "—"),
           "files / golden vs integer mismatches": f"{h['files_vs_integer_mismatches']} / "
                                                   f"{h['golden_vs_integer_mismatches']}",
           "golden cycles": h["golden_cycles"],
           **{f"RTL {sim} mismatches (out / psum)": f"{h[f'rtl_{sim}_output_mismatches']} / "
                                                    f"{h[f'rtl_{sim}_psum_mismatches']}"
              for sim in ("icarus", "verilator") if f"rtl_{sim}_cycles" in h},
           **{f"RTL {sim} cycles": h[f"rtl_{sim}_cycles"] for sim in ("icarus", "verilator")
              if f"rtl_{sim}_cycles" in h}}
          for r in rows for h in merge_group_passes(r.get("hardware", []))]
    return (f"`qmap run {config}` once per seed (seed, calibration sample and batch order all set to the seed).\n\n"
            f"{table}\n\nFP top-1 {s['top1_fp']:.2f} %. Quantized top-1 median {q['median']:.2f} % "
            f"(min {q['min']:.2f}, max {q['max']:.2f}); median gap to FP {s['median_gap_pp']:.2f} pp. "
            f"Whole-run wall time median {w['median']:.0f} s (min {w['min']:.0f}, max {w['max']:.0f}).\n"
            + (f"\n## Target layers through files, golden model and RTL\n\n{markdown_table(hw)}\n" if hw else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data", help="data root (default: $QMAP_DATA)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override passed to every run (recorded in the results)")
    p.add_argument("--work-dir", type=Path, help="where the runs' output folders go (default: a temporary folder)")
    p.add_argument("--resume", action="store_true", help="keep runs of an earlier invocation with the same config")
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    name = f"runs_{cfg.name}"
    config_sha = hashlib.sha256(args.config.read_bytes() + repr(args.set).encode()).hexdigest()
    out_json = Path(args.out_dir) / f"{name}.json"
    rows: list[dict] = []
    if args.resume and out_json.is_file():
        old = json.loads(out_json.read_text())
        rows = old["runs"] if old.get("config_sha256") == config_sha else []
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="qmap-runs-") as tmp:
        work = args.work_dir or Path(tmp)
        for seed in seeds:
            if any(r["seed"] == seed for r in rows):
                continue
            row = run_once(args.config, seed, cfg.method.name, args.data, work, args.set)
            print(json.dumps(row), flush=True)
            rows = sorted([*rows, row], key=lambda r: r["seed"])
            write(args, name, config_sha, rows)
    if rows:  # also when every seed was done already (--resume): the file is rendered again
        write(args, name, config_sha, rows)
    return 0


def write(args, name: str, config_sha: str, rows: list[dict]) -> None:
    s = summary(rows)
    data = {"config": str(args.config), "overrides": args.set, "config_sha256": config_sha, "runs": rows,
            "summary": s}
    shown = " ".join([str(args.config), *(f"--set {x}" for x in args.set)])
    write_result(name, data, markdown(shown, rows, s), out_dir=args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
