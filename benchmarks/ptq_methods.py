"""PTQ methods compared on the reference checkpoint: test top-1, wall time and peak memory per (setting, method).

    python benchmarks/ptq_methods.py [--data DIR] [--settings W4A4,W3A3,W2A4,W4A2,W2A2]
        [--methods fp,rtn,adaround,brecq,qdrop,ocs,domr-no-omr,domr,domr-block] [--iters 500] [--djos-iters 1000]

``domr`` is Algorithm 1 (network-wise DJOS, ``--djos-granularity`` changes it); ``domr-block`` the same
objective minimised stage by stage (the memory-bound form), for comparison.

Every row (one method at one setting) runs in a child process, so its peak RSS is its own; the results file
``benchmarks/results/ptq_methods.json`` (+ ``.md``) is rewritten after every row, so a run killed midway keeps
its finished rows, and ``--resume`` skips rows already there (with the same options). First and last layers
are 8-bit in every setting. Calibration: ``--calib`` seeded class-balanced training images (one set, shared
by every method); test: ``--test-split`` (``test``: the 10k JPEG mirror; ``test_exact``: 1017 genuine images).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from qmap.data import calibration_set, load_cifar10, resolve_data_root, to_tensor
from qmap.evaluate import evaluate
from qmap.methods import get_method
from qmap.models import load_model
from qmap.quant import QuantConfig
from qmap.report.plots import grouped_bars, plt, save_figure
from qmap.report.results import markdown_table, write_result

NAME = "ptq_methods"
ALL_SETTINGS = "W4A4,W3A3,W2A4,W4A2,W2A2"
ALL_METHODS = "fp,rtn,adaround,brecq,qdrop,ocs,domr-no-omr,domr"
ORDER = ["rtn", "adaround", "brecq", "qdrop", "domr"]  # the expected ranking, worst to best
CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"


def method_call(name: str, args) -> tuple[str, dict]:
    """Registry name and options of a benchmark method."""
    recon = {"iters": args.iters, "batch_size": args.batch_size, "seed": args.seed}
    djos = {"iters": args.djos_iters, "batch_size": args.batch_size, "seed": args.seed,
            "granularity": args.djos_granularity}
    table = {"rtn": ("rtn", {}), "adaround": ("adaround", recon), "brecq": ("brecq", recon),
             "qdrop": ("qdrop", recon), "ocs": ("ocs", {"expand_ratio": args.ocs_expand}),
             "domr-no-omr": ("domr", {**djos, "omr": False}),
             "domr": ("domr", {**djos, "omr": True, "omr_options": {"budget": args.omr_budget}}),
             "domr-block": ("domr", {**djos, "granularity": "block", "omr": True,
                                     "omr_options": {"budget": args.omr_budget}})}
    return table[name]


def parse_setting(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"W(\d)A(\d)", s.strip().upper())
    if not m:
        raise SystemExit(f"bad setting {s!r}: use e.g. W4A4")
    return int(m[1]), int(m[2])


def load_inputs(args):
    root = resolve_data_root(args.data)
    model, manifest = load_model(args.checkpoint or root / CHECKPOINT)
    mean, std = manifest.mean_std()
    calib_ds = calibration_set(load_cifar10(root, args.calib_split), args.calib, seed=args.seed)
    test = load_cifar10(root, args.test_split)
    if args.test_limit:
        test = test.head(args.test_limit)
    return model.eval(), to_tensor(calib_ds.images, mean, std), test, mean, std


def run_row(args) -> dict:
    """One (method, setting) in this process."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, calib, test, mean, std = load_inputs(args)
    model = model.to(device)
    method, setting = args.row
    row = {"setting": setting, "method": method}
    t0 = time.perf_counter()
    if method == "fp":
        qmodel, report = model, {}
    else:
        w, a = parse_setting(setting)
        reg, opts = method_call(method, args)
        if args.work_dir and reg in ("adaround", "brecq", "qdrop", "domr"):
            opts = {**opts, "work_dir": str(Path(args.work_dir) / f"{method}-{setting}"), "resume": True}
        res = get_method(reg)(model, calib.to(device), QuantConfig(w_bits=w, a_bits=a), **opts)
        qmodel, report = res.model, res.report
    row["method_seconds"] = time.perf_counter() - t0
    ev = evaluate(qmodel, test, mean, std, batch_size=500, device=device, progress=False)
    row.update(top1=100 * ev["top1"], n_test=ev["n"], eval_seconds=ev["seconds"],
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if report.get("omr"):
        omr = report["omr"]
        row.update(omr_extra_channels=omr["extra_channels"], omr_extra_mac_fraction=omr["fraction"])
    if "blocks" in report:
        row["recon_error_before"] = sum(b["error_before"] for b in report["blocks"])
        row["recon_error_after"] = sum(b["error_after"] for b in report["blocks"])
    if method == "ocs":
        row["ocs_report"] = {k: v for k, v in report.items() if k not in ("method",)}
    return row


def options_of(args) -> dict:
    keys = ("iters", "djos_iters", "djos_granularity", "batch_size", "calib", "calib_split", "test_split",
            "test_limit", "seed", "ocs_expand", "omr_budget", "threads")
    return {k: getattr(args, k) for k in keys}


def ordering(rows: list[dict]) -> list[str]:
    """Inversions of DOMR ≥ QDrop ≥ BRECQ ≥ AdaRound ≥ RTN, per setting."""
    notes = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        top = {r["method"]: r["top1"] for r in rows if r["setting"] == setting}
        have = [m for m in ORDER if m in top]
        for lo, hi in zip(have, have[1:]):
            if top[hi] < top[lo]:
                notes.append(f"{setting}: {hi} ({top[hi]:.2f}) < {lo} ({top[lo]:.2f})")
    return notes


def settings_and_methods(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The quantized settings and methods present in ``rows``, in row order (the FP row left out)."""
    q = [r for r in rows if r["method"] != "fp"]
    return list(dict.fromkeys(r["setting"] for r in q)), list(dict.fromkeys(r["method"] for r in q))


def markdown(rows: list[dict], opts: dict) -> str:
    fp = next((r["top1"] for r in rows if r["method"] == "fp"), None)
    table = [{"setting": r["setting"], "method": r["method"], "top-1 %": r["top1"],
              "Δ vs FP pp": r["top1"] - fp if fp is not None else "",
              "method s": r["method_seconds"], "peak RSS MB": r["peak_rss_mb"],
              "OMR extra MACs": f"{100 * r['omr_extra_mac_fraction']:.1f} %" if "omr_extra_mac_fraction" in r else ""}
             for r in rows]
    settings, methods = settings_and_methods(rows)
    pivot = [{"method": m, **{s: next((f"{r['top1']:.2f}" for r in rows if r["method"] == m and r["setting"] == s),
                                     "") for s in settings}} for m in methods]
    inv = ordering(rows)
    return (f"Options: `{json.dumps(opts)}`\n\n## Top-1 (%) by setting\n\n" + markdown_table(pivot)
            + "\n## All rows\n\n" + markdown_table(table)
            + "\n## Ordering DOMR ≥ QDrop ≥ BRECQ ≥ AdaRound ≥ RTN\n\n"
            + ("\n".join(f"- inversion: {n}" for n in inv) if inv else "- holds for every setting measured") + "\n")


def run_child(passthrough: list[str], method: str, setting: str) -> dict:
    """One row in a child process (its own peak RSS); a failed row is recorded with its exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, *passthrough, "--row", method, setting, "--row-out", str(out)]
        proc = subprocess.run(cmd, env=os.environ.copy())
        if proc.returncode != 0:
            print(f"row {method} {setting} failed (exit {proc.returncode})", file=sys.stderr)
            return {"method": method, "setting": setting, "error": f"exit {proc.returncode}"}
        return json.loads(out.read_text())


def plot(rows: list[dict], path: Path) -> None:
    """Top-1 per setting (groups) and method (bars), FP as a dashed line."""
    settings, methods = settings_and_methods(rows)
    top = {(r["method"], r["setting"]): r["top1"] for r in rows}
    _, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(settings) * len(methods)), 4.0))
    grouped_bars(ax, settings, {m: [top.get((m, s), 0.0) for s in settings] for m in methods},
                 ylabel="test top-1 %", log=False, rotation=0, title="PTQ methods, first/last layer 8-bit")
    if ("fp", "FP") in top:
        ax.axhline(top[("fp", "FP")], color="k", linestyle="--", linewidth=1, label="FP")
        ax.legend(fontsize=7, ncol=3)
    save_figure(ax.figure, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data root (default: $QMAP_DATA)")
    p.add_argument("--checkpoint", help=f"checkpoint (default: DATA/{CHECKPOINT})")
    p.add_argument("--settings", default=ALL_SETTINGS)
    p.add_argument("--methods", default=ALL_METHODS)
    p.add_argument("--iters", type=int, default=500, help="Adam iterations per block (AdaRound, BRECQ, QDrop)")
    p.add_argument("--djos-iters", type=int, default=1000, help="DJOS iterations T (DOMR)")
    p.add_argument("--djos-granularity", default="network", choices=("network", "block", "layer"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--calib-split", default="train", choices=("train", "train_exact"))
    p.add_argument("--test-split", default="test", choices=("test", "test_exact"))
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--ocs-expand", type=float, default=0.02)
    p.add_argument("--omr-budget", type=float, default=0.25, help="selective OMR: max fraction of extra channels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per row")
    p.add_argument("--jobs", type=int, default=1,
                   help="rows run at once (on 2 cores, --jobs 2 --threads 1 has ~1.4x the throughput of one "
                        "2-thread row; each row's wall time then reflects the shared machine)")
    p.add_argument("--device")
    p.add_argument("--work-dir", help="reconstruction resume state per row (a killed row resumes)")
    p.add_argument("--resume", action="store_true", help="keep finished rows of an earlier run with the same options")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--row", nargs=2, metavar=("METHOD", "SETTING"), help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.row:
        Path(args.row_out).write_text(json.dumps(run_row(args)))
        return 0
    opts = options_of(args)
    out_json = Path(args.out_dir) / f"{NAME}.json"
    rows = []
    if args.resume and out_json.is_file():
        old = json.loads(out_json.read_text())
        rows = old["rows"] if old.get("options") == opts else []
    methods = args.methods.split(",")
    jobs = [("fp", "FP")] if "fp" in methods else []
    jobs += [(m, s.strip().upper()) for s in args.settings.split(",") for m in methods if m != "fp"]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    todo = [j for j in jobs if not any(r["method"] == j[0] and r["setting"] == j[1] and "top1" in r for r in rows)]
    rows = [r for r in rows if "top1" in r]
    grid = [("fp", "FP"), *((m, st) for st in ALL_SETTINGS.split(",") for m in ALL_METHODS.split(","))]
    order = {j: i for i, j in enumerate(dict.fromkeys([*grid, *jobs]))}  # rows of a --resume stay in grid order
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_child, passthrough, method, setting) for method, setting in todo]
        for fut in as_completed(futures):
            row = fut.result()
            print(json.dumps(row), flush=True)
            rows = sorted([*rows, row], key=lambda r: order.get((r["method"], r["setting"]), len(order)))
            ok = [r for r in rows if "top1" in r]
            write_result(NAME, {"options": opts, "rows": rows, "ordering_inversions": ordering(ok)},
                         markdown(ok, opts), out_dir=args.out_dir, seed=args.seed)
            plot(ok, Path(args.out_dir) / f"{NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
