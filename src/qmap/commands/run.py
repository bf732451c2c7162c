"""'qmap run': the whole flow from a YAML/JSON config (and/or flags)."""

from __future__ import annotations

import json
import sys

from ..config import ModelConfig, RunConfig, load_config, parse_value, set_dotted
from ..errors import ConfigError
from .common import (
    add_data_option,
    add_device_option,
    add_logging_options,
    add_model_options,
    bits,
    model_overrides,
    parse_pairs,
    positive_int,
)


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="quantize → evaluate → integer model → hardware files → golden model/RTL → report",
        description="Run the whole flow: load the checkpoint, fuse BN, quantize with the chosen method, evaluate "
                    "FP and quantized, build the integer model, export the hardware files of the target layer(s), "
                    "check them on the golden model (and the RTL when a simulator is installed), write "
                    "results.json, the quantized model and report.html/report.md into --out. The whole config "
                    "is checked before any data is loaded or anything is written.")
    p.add_argument("config", nargs="?", help="run config (YAML or JSON); flags below override it")
    p.add_argument("-c", "--checkpoint", help="model checkpoint (safetensors + JSON manifest beside it)")
    p.add_argument("--method", help="rtn | alpha | adaround | brecq | qdrop | ocs | domr")
    p.add_argument("--w-bits", type=bits, help="weight bits (2..8)")
    p.add_argument("--a-bits", type=bits, help="activation bits (2..8)")
    p.add_argument("--calib-size", type=positive_int, metavar="N", help="calibration images (data.calib_size)")
    add_data_option(p)
    add_model_options(p)
    add_device_option(p)
    p.add_argument("-o", "--out", help="output folder (default: runs/<name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set data.test_limit=1000 --set method.options.iters=200")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder (only a qmap run folder, only after the checks pass)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in the same folder (the config must be the same)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    add_logging_options(p)
    p.set_defaults(func=main)


def build_config(args) -> RunConfig:
    if args.config:
        cfg = load_config(args.config, checkpoint=args.checkpoint)
    elif args.checkpoint:
        cfg = RunConfig(model=ModelConfig(checkpoint=args.checkpoint))
    else:
        raise ConfigError("give a run config file or --checkpoint")
    flags = (("model.checkpoint", args.checkpoint), ("method.name", args.method), ("quant.w_bits", args.w_bits),
             ("quant.a_bits", args.a_bits), ("data.calib_size", args.calib_size), ("device", args.device))
    for key, value in (*flags, *model_overrides(args).items()):
        if value is not None:
            set_dotted(cfg, key, value)
    for key, value in parse_pairs(args.set, "--set"):
        set_dotted(cfg, key, parse_value(value, f"--set {key}"))
    return cfg


def main(args) -> int:
    from ..pipeline import run
    from ..report.verdict import rtl_summary, verdict
    from ..runfolder import check_inputs_outside

    cfg = build_config(args)
    out = args.out or f"runs/{cfg.name}"
    if args.overwrite and args.config:
        check_inputs_outside(out, {"the config": args.config})
    results = run(cfg, out, data=args.data, overwrite=args.overwrite, resume=args.resume, quiet=args.quiet)
    if args.json:
        json.dump(results, sys.stdout, default=str)
        print()
    elif not args.quiet:
        m = results["metrics"]
        print(f"top-1 FP {100 * m['top1_fp']:.2f} %  quantized {100 * m['top1_quantized']:.2f} %  → {out}")
        for row in verdict(results):
            print(f"  {row['status']:7s} {row['check']}: {row['detail']}")
        print(rtl_summary(results))
    return 0
