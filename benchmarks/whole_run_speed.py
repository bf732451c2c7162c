"""One ``qmap run`` config on a baseline commit's code and on this checkout, side by side: end-to-end time and
whether the results are the same.

    QMAP_DATA=../shared/data python benchmarks/whole_run_speed.py configs/domr_w2a4.yaml [--baseline 4eaf032]
        [--seed 0]

Both runs are the unchanged ``qmap run`` command in child processes started together, one thread each
(``OMP_NUM_THREADS=1``), so on this 2-core machine each has a core and whatever else loads the machine loads both
alike; the baseline is ``src/qmap`` of ``--baseline`` extracted with ``git archive`` (:mod:`baseline`). Per run:
wall and CPU seconds of the whole command (``os.wait4``), the method's own seconds and its per-block seconds
(reconstruction methods), top-1 of the fake-quant and integer models, and the summed reconstruction error
before / after. Writes ``benchmarks/results/whole_run_speed_<config name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import REPO, extract_package

from qmap.config import load_config
from qmap.report.results import markdown_table, write_result

RECON_METHODS = ("adaround", "brecq", "qdrop", "domr")

BASELINE = "4eaf032"  # main before the twelfth stop's engine changes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--baseline", default=BASELINE, help="git commit whose qmap package is the baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--out-dir", default="benchmarks/results")
    return p.parse_args()


def start(import_root: Path, config: Path, method: str, out: Path, seed: int,
          data: str | None) -> tuple[subprocess.Popen, float]:
    """``qmap run`` of ``config`` with the package under ``import_root``, one thread, every seed set to ``seed``."""
    env = {**os.environ, "PYTHONPATH": str(import_root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sets = [f"seed={seed}", f"data.calib_seed={seed}"] + ([f"method.options.seed={seed}"]
                                                          if method in RECON_METHODS else [])
    cmd = [sys.executable, "-m", "qmap", "run", str(config.resolve()), "--out", str(out), "--quiet"]
    cmd += [a for s in sets for a in ("--set", s)] + (["--data", data] if data else [])
    with open(out.parent / f"{out.name}.stderr", "w") as log:  # a file, not a pipe: a full pipe would stall it
        proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=log)
    return proc, time.perf_counter()


def finish(name: str, proc: subprocess.Popen, t0: float, out: Path) -> dict:
    """Wait for ``proc`` (its own CPU time from ``os.wait4``) and read its results.json."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: qmap run failed ({proc.returncode}):\n"
                         f"{(out.parent / f'{out.name}.stderr').read_text()[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    m, rep = res["metrics"], res.get("method_report", {})
    blocks = rep.get("blocks") or []
    return {"engine": name, "wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "method_seconds": rep.get("seconds"), "block_seconds": [b["seconds"] for b in blocks],
            "top1_quantized": 100 * m["top1_quantized"], "top1_integer": 100 * m.get("top1_integer", float("nan")),
            "recon_error_before": sum(b["error_before"] for b in blocks) if blocks else None,
            "recon_error_after": sum(b["error_after"] for b in blocks) if blocks else None}


def main() -> None:
    args = parse_args()
    method = load_config(args.config).method.name  # a bad config: its one-line error here, not from the children
    with tempfile.TemporaryDirectory(prefix="qmap-whole-run-") as tmp:
        tmp = Path(tmp)
        roots = {"baseline": extract_package(args.baseline, tmp / "baseline"), "current": REPO / "src"}
        outs = {k: tmp / f"run-{k}" for k in roots}
        procs = {k: start(roots[k], args.config, method, outs[k], args.seed, args.data) for k in roots}
        print(f"running {args.config} on {args.baseline} and on this checkout, one thread each ...", flush=True)
        rows = [finish(k, *procs[k], outs[k]) for k in roots]
    base, cur = rows
    data = {"config": str(args.config), "baseline_commit": args.baseline, "seed": args.seed, "runs": rows,
            "speedup_wall": base["wall_seconds"] / cur["wall_seconds"],
            "speedup_cpu": base["cpu_seconds"] / cur["cpu_seconds"],
            "speedup_method": (base["method_seconds"] / cur["method_seconds"]) if cur["method_seconds"] else None,
            "speedup_block0": (base["block_seconds"][0] / cur["block_seconds"][0]) if cur["block_seconds"] else None,
            "same_accuracy": base["top1_quantized"] == cur["top1_quantized"]
            and base["top1_integer"] == cur["top1_integer"]}
    write_result(f"whole_run_speed_{args.config.stem}", data, render(data), out_dir=args.out_dir, seed=args.seed)
    print(f"whole run {data['speedup_wall']:.2f}x, method {data['speedup_method'] or float('nan'):.2f}x; "
          f"same accuracy: {data['same_accuracy']}", flush=True)


def render(d: dict) -> str:
    rows = [{"engine": r["engine"] + (f" ({d['baseline_commit']})" if r["engine"] == "baseline" else ""),
             "top-1 %": r["top1_quantized"], "integer %": r["top1_integer"],
             "recon error before → after": (f"{r['recon_error_before']:.4g} → {r['recon_error_after']:.4g}"
                                            if r["recon_error_before"] is not None else "—"),
             "block 0 s": r["block_seconds"][0] if r["block_seconds"] else "—",
             "method s": r["method_seconds"], "whole run s": r["wall_seconds"], "CPU s": r["cpu_seconds"]}
            for r in d["runs"]]

    def ratio(v):
        return f"{v:.2f}×" if v else "—"

    return (f"`qmap run {d['config']}` (seed {d['seed']}) with the code of `{d['baseline_commit']}` and with this "
            "checkout, started together, one thread each.\n\n" + markdown_table(rows)
            + f"\nSpeed-up (baseline / current): whole run {ratio(d['speedup_wall'])} (CPU "
            f"{ratio(d['speedup_cpu'])}), method {ratio(d['speedup_method'])}, block 0 {ratio(d['speedup_block0'])}. "
            f"Same top-1 (fake-quant and integer): {'yes' if d['same_accuracy'] else 'no'}.\n")


if __name__ == "__main__":
    main()
