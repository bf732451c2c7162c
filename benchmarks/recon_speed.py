"""Reconstruction speed on block 0: the engine of a baseline commit vs this checkout, side by side in one run.

Block 0 of the reference VGG16 (the first stage: two convolutions on 32×32 maps and a max-pool) dominates every
reconstruction method's time. For each case (``--methods`` × ``--threads``: BRECQ, or QDrop with its drop
probability, at ``--setting``), both engines run the same reconstruction on the same seeded calibration images,
batch size and thread count through their own public ``reconstruct`` (stopped after block 0), in alternating
order, ``--repeats`` times:

    seconds per iteration = (t(iters = N) − t(iters = 0)) / N

so that the block's set-up (FP targets, error evaluation, next-block inputs) cancels. t is the process's CPU
time (one thread: what the iterations cost, whatever else the shared machine runs) and, for reference, the
wall time (which on a loaded machine measures mostly the scheduler); the speed-up is the ratio of median
CPU-time iteration rates. The baseline engine is
the ``qmap`` package of ``--baseline`` (default: the last commit before the speed work), extracted with
``git archive`` into a temporary folder and imported as ``qmap_base``; nothing of it stays in ``src``.
Both use the same (symmetric) weight grid, so the arithmetic is the same. The result also says how close the
two learned blocks are (identical hardened weight integers; the learned activation steps) — equal up to the
float round-off of a different summation order, not bit for bit.

``--profile`` adds a torch.profiler table (top operators by self CPU time) of one run of each engine (first
case).

    QMAP_DATA=../shared/data python benchmarks/recon_speed.py [--iters 30] [--repeats 7] [--methods qdrop,brecq]
        [--threads 1,2]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from baseline import extract_package

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.models import load_model
from qmap.report.results import markdown_table, median_of, write_result

CHECKPOINT = "models/vgg16_bn_sq8_w0.5.safetensors"
BASELINE = "4676475"
METHODS = {"brecq": {"granularity": "block"}, "qdrop": {"granularity": "block", "drop_prob": 0.5}}


class BlockDone(Exception):
    """Raised after block 0 to stop a reconstruction."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("QMAP_DATA"), help="data root (default: $QMAP_DATA)")
    p.add_argument("--baseline", default=BASELINE, help="git commit of the baseline engine")
    p.add_argument("--methods", default="qdrop,brecq", help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--setting", default="W2A4")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args()


def baseline_package(commit: str, folder: Path):
    """The ``qmap`` package of ``commit`` as the module ``qmap_base`` (extracted under ``folder``)."""
    sys.path.insert(0, str(extract_package(commit, folder, "qmap_base")))
    return importlib.import_module("qmap_base")


class Engine:
    """One engine's calibrated model (copied per run) and a timed block-0 reconstruction."""

    def __init__(self, name: str, pkg, model, calib: torch.Tensor, w: int, a: int, args):
        from importlib import import_module

        self.name, self.calib, self.args = name, calib, args
        quant = import_module(f"{pkg.__name__}.quant")
        self.recon = import_module(f"{pkg.__name__}.methods.recon")
        extra = {"w_symmetric": True} if "w_symmetric" in quant.QuantConfig.__dataclass_fields__ else {}
        self.qmodel = quant.quantize_model(model, quant.QuantConfig(w_bits=w, a_bits=a, **extra))
        quant.calibrate(self.qmodel, calib)
        self.quant_layers = quant.quant_layers

    def run(self, method: str, iters: int):
        """(CPU seconds, wall seconds, model) of block 0 with ``iters`` iterations."""
        qmodel = copy.deepcopy(self.qmodel)
        cfg = self.recon.ReconConfig(iters=iters, **METHODS[method], batch_size=self.args.batch_size,
                                     seed=self.args.seed, eval_samples=32)

        def stop(k: int) -> None:
            raise BlockDone

        c0, t0 = time.process_time(), time.perf_counter()
        try:
            self.recon.reconstruct(qmodel, self.calib, cfg, on_block_done=stop)
        except BlockDone:
            pass
        return time.process_time() - c0, time.perf_counter() - t0, qmodel

    def block_state(self, qmodel) -> dict[str, torch.Tensor]:
        """Hardened weight integers and activation steps of block 0's layers (first two quantized layers)."""
        out = {}
        for name, m in self.quant_layers(qmodel)[:2]:
            out[f"{name}.w_int"] = m.weight_quantizer.to_int(m.weight.detach())
            out[f"{name}.x_step"] = m.input_quantizer.scale.detach().clone()
        return out


def profile_table(engine: Engine, method: str, iters: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.run(method, iters)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)


def measure(engines: list[Engine], method: str, threads: int, args) -> dict:
    """One case: alternating timed runs of both engines, their median rates and how close the learned blocks are."""
    torch.set_num_threads(threads)
    per_iter = {e.name: [] for e in engines}
    wall = {e.name: [] for e in engines}
    models = {}
    for e in engines:  # warm-up: lazy initialisation
        e.run(method, 3)
    for r in range(args.repeats):
        for e in engines if r % 2 == 0 else engines[::-1]:
            c0, w0, _ = e.run(method, 0)
            cn, wn, models[e.name] = e.run(method, args.iters)
            per_iter[e.name].append((cn - c0) / args.iters)
            wall[e.name].append((wn - w0) / args.iters)
            print(f"{method} {threads} thread(s), repeat {r} {e.name}: {per_iter[e.name][-1] * 1e3:.1f} CPU "
                  f"ms/iteration ({wall[e.name][-1] * 1e3:.1f} ms wall)", flush=True)
    states = {e.name: e.block_state(models[e.name]) for e in engines}
    base = engines[0].name
    agreement = {name: {k: (float((states[base][k] == v).double().mean()) if k.endswith("w_int")
                            else float(((states[base][k] - v).abs() / states[base][k].abs()).max()))
                        for k, v in st.items()} for name, st in states.items() if name != base}
    stats = {k: median_of([1 / t for t in v]) for k, v in per_iter.items()}
    wall_stats = {k: median_of([1 / t for t in v]) for k, v in wall.items()}
    return {"method": method, "threads": threads, "cpu_seconds_per_iteration": per_iter,
            "iterations_per_cpu_second": stats, "wall_seconds_per_iteration": wall,
            "iterations_per_wall_second": wall_stats,
            "speedup": {k: v["median"] / stats[base]["median"] for k, v in stats.items() if k != base},
            "wall_speedup": {k: v["median"] / wall_stats[base]["median"] for k, v in wall_stats.items() if k != base},
            "agreement": agreement}


def main() -> None:
    args = parse_args()
    if not args.data:
        raise SystemExit("set QMAP_DATA or pass --data")
    methods = [m for m in args.methods.split(",") if m]
    threads = [int(t) for t in args.threads.split(",") if t]
    if not methods or any(m not in METHODS for m in methods) or not threads or min(threads) < 1:
        raise SystemExit(f"--methods must name some of {', '.join(METHODS)} and --threads positive counts")
    torch.set_num_threads(threads[0])
    w, a = (int(v) for v in args.setting[1:].split("A"))
    root = Path(args.data)
    model, manifest = load_model(root / CHECKPOINT)
    mean, std = manifest.mean_std()
    calib_set = calibration_set(load_cifar10(root, "train"), args.calib, args.seed)
    calib = to_tensor(calib_set.images, mean, std)
    import qmap

    with tempfile.TemporaryDirectory(prefix="qmap-baseline-") as tmp:
        base = baseline_package(args.baseline, Path(tmp))
        engines = [Engine(name, pkg, model, calib, w, a, args) for name, pkg in (("baseline", base), ("current", qmap))]
        cases = [measure(engines, m, t, args) for m in methods for t in threads]
        torch.set_num_threads(threads[0])
        profiles = {e.name: profile_table(e, methods[0], args.iters) for e in engines} if args.profile else {}
    data = {"setting": args.setting, "iters": args.iters, "batch_size": args.batch_size, "repeats": args.repeats,
            "calibration": {"source": calib_set.source, "n": len(calib_set)}, "baseline_commit": args.baseline,
            "cases": cases, "profiles": profiles, "profiled_case": {"method": methods[0], "threads": threads[0]}}
    write_result("recon_speed", data, render(data), out_dir=args.out, seed=args.seed)
    for c in cases:
        print(f"{c['method']} {c['threads']} thread(s): speed-up "
              + ", ".join(f"{k} {v:.2f}x" for k, v in c["speedup"].items()), flush=True)


def render(d: dict) -> str:
    rows = [{"method": c["method"], "threads": c["threads"], "engine": k,
             "it/CPU-s median": v["median"], "min–max": f"{v['min']:.3g}–{v['max']:.3g}",
             "speed-up (CPU)": f"{c['speedup'][k]:.2f}×" if k in c["speedup"] else "1",
             "speed-up (wall)": f"{c['wall_speedup'][k]:.2f}×" if k in c["wall_speedup"] else "1"}
            for c in d["cases"] for k, v in c["iterations_per_cpu_second"].items()]
    agree = [{"method": c["method"], "threads": c["threads"], "engine": name, "tensor": k, "agreement": v}
             for c in d["cases"] for name, st in c["agreement"].items() for k, v in st.items()]
    body = (f"Block 0 of the reference VGG16 at {d['setting']} (symmetric weights in every engine), batch "
            f"{d['batch_size']}, {d['iters']} timed iterations per run, {d['repeats']} runs per engine and case "
            f"alternating between the engines, calibration {d['calibration']['source']}. Baseline: the engine at "
            f"`{d['baseline_commit']}`. Each engine runs 3 warm-up iterations per case before the timed runs. "
            "Rates are median iterations per CPU-second of the process (with more than "
            "one thread, CPU-seconds count every thread; the wall-clock ratio is given too, which on a shared "
            "machine partly measures the scheduler).\n\n" + markdown_table(rows)
            + "\nLearned block after the last run of a case: fraction of identical hardened weight integers "
            "(`w_int`) and the largest relative difference of the learned activation steps (`x_step`), against the "
            "baseline (equal up to float round-off and, with QDrop, different drop masks):\n\n" + markdown_table(agree))
    for k, table in d["profiles"].items():
        pc = d["profiled_case"]
        body += (f"\n## Profile: {k} engine ({pc['method']}, {pc['threads']} thread(s), {d['iters']} iterations)\n\n"
                 f"```\n{table}\n```\n")
    return body


if __name__ == "__main__":
    main()
