"""'qmap sim DIR': run the golden model (and optionally the RTL) on an exported folder of hardware test vectors
(a layer folder written by 'qmap run', e.g. runs/seed/hw/features.27/image0) and print the agreement and cycle
counts. 'qmap sim --random' exports random layers first (--layers N, into --out). Exit code 0 when everything
agrees, 1 when a check disagrees. The RTL is built in --build-dir (default: a temporary folder, removed
afterwards), never inside the folder being checked."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..hw.export import export_conv, read_export
from ..hw.mapping import fold_input_indices
from ..hw.sim import run_cocotb, run_plain_tb
from ..hw.spec import ArraySpec
from ..hw.systolic import simulate
from .common import add_logging_options, check_out_dir_free, int_in

MAX_RANDOM_LAYERS = 1000  # each is a folder of course files and a simulation: more is a typo, not a test


def register(subparsers) -> None:
    p = subparsers.add_parser("sim", help="golden model (+ RTL) on exported hardware test vectors",
                              description=__doc__)
    p.add_argument("dir", nargs="?", help="folder written by the hardware export (manifest.json + course files)")
    p.add_argument("--random", action="store_true", help="export random layers and simulate those instead")
    p.add_argument("--layers", type=int_in(1, MAX_RANDOM_LAYERS), default=3, metavar="N",
                   help=f"number of random layers (with --random; at most {MAX_RANDOM_LAYERS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", help="where --random writes its folders (default: a temporary folder)")
    p.add_argument("--rtl", choices=["icarus", "verilator"], help="also run the Verilog core under this simulator")
    p.add_argument("--runner", choices=["cocotb", "plain"], default="cocotb", help="RTL testbench (with --rtl)")
    p.add_argument("--build-dir", metavar="DIR",
                   help="where the RTL is built (default: a temporary folder, removed afterwards)")
    p.add_argument("--engine", choices=["cycle", "wavefront"], default="cycle")
    p.add_argument("--json", action="store_true", help="print one JSON object per folder")
    add_logging_options(p)
    p.set_defaults(func=run)


def _random_folders(root: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folders = []
    for i in range(n):
        spec = ArraySpec(rows=int(rng.choice([4, 8])), cols=int(rng.choice([4, 8])), a_bits=int(rng.choice([2, 4])),
                         psum_bits=20)
        cin, cout, h = int(rng.integers(1, 17)), int(rng.integers(1, 17)), int(rng.integers(2, 6))
        x = rng.integers(0, 1 << spec.a_bits, (cin, h, h))
        w = rng.integers(-(1 << (spec.w_bits - 1)), 1 << (spec.w_bits - 1), (cout, cin, 3, 3))
        export_conv(x, w, spec, root / f"layer{i}", meta={"source": "random", "seed": seed})
        folders.append(root / f"layer{i}")
    return folders


def simulate_folder(folder: Path, engine: str, rtl: str | None, runner: str, build_dir: Path | None = None) -> dict:
    """Golden model on the parsed files: psum/output mismatches and cycles; plus the RTL run if asked."""
    vec = read_export(folder)
    res = simulate(vec.mapped, engine)
    idx = fold_input_indices(vec.mapped.geom)
    expected_psums = vec.psums[:, :, np.arange(idx.shape[0])[:, None], idx, :]
    row = {"dir": str(folder), "golden_psum_mismatches": int(np.count_nonzero(res.fold_psums != expected_psums)),
           "golden_output_mismatches": int(np.count_nonzero(res.outputs != vec.outputs)),
           "golden_cycles": res.cycles.total, "utilisation": res.cycles.utilisation, "golden_s": res.wall_s}
    if rtl:
        r = (run_cocotb if runner == "cocotb" else run_plain_tb)(folder, rtl, build_dir=build_dir)
        row.update({f"rtl_{k}": v for k, v in r.items() if k != "simulator"}, rtl_simulator=rtl)
    return row


def run(args) -> int:
    from ..errors import ConfigError, HardwareError
    from ..hw.sim import simulator_available

    checked = args.out if args.random else args.dir
    if args.build_dir and checked and Path(checked).resolve() in (b := Path(args.build_dir).resolve(), *b.parents):
        raise ConfigError(f"--build-dir {args.build_dir} is inside the folder being checked ({checked}); "
                          "build the RTL elsewhere")
    if args.rtl and not simulator_available(args.rtl):
        raise ConfigError(f"--rtl {args.rtl}: the simulator is not installed")
    if args.random:
        if args.dir:
            raise ConfigError("give an exported folder or --random, not both")
        if args.out:
            check_out_dir_free(args.out)
        root = Path(args.out or tempfile.mkdtemp(prefix="qmap_sim_"))
        folders = _random_folders(root, args.layers, args.seed)
    elif args.dir:
        folders = [Path(args.dir)]
        if not folders[0].is_dir():
            raise HardwareError(f"{folders[0]} is not a folder of exported test vectors")
    else:
        raise ConfigError("give an exported folder or --random")
    failed = False
    for folder in folders:
        build = Path(args.build_dir) / folder.name if args.build_dir else None
        scratch = None
        if args.rtl and build is None:
            scratch = Path(tempfile.mkdtemp(prefix="qmap_rtl_build_"))
            build = scratch
        try:
            row = simulate_folder(folder, args.engine, args.rtl, args.runner, build)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        bad = row["golden_psum_mismatches"] + row["golden_output_mismatches"]
        if args.rtl:
            bad += row["rtl_psum_mismatches"] + row["rtl_output_mismatches"]
            bad += int(row["rtl_cycles"] != row["golden_cycles"])
        failed |= bad > 0
        if args.json:
            print(json.dumps(row))
            continue
        line = (f"{folder}: golden {row['golden_cycles']} cycles ({row['utilisation']:.1%} PE utilisation), "
                f"mismatches psum {row['golden_psum_mismatches']} out {row['golden_output_mismatches']}")
        if args.rtl:
            line += (f"; RTL/{args.rtl} {row['rtl_cycles']} cycles, mismatches psum {row['rtl_psum_mismatches']} "
                     f"out {row['rtl_output_mismatches']}, {row['rtl_cycles_per_s']:.0f} cycles/s")
        print(line + ("  AGREE" if bad == 0 else "  DISAGREE"))
    return 1 if failed else 0
