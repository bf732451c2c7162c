"""``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG) for a run folder, rendered
with Jinja2 from ``templates/``: the verdict first (:mod:`qmap.report.verdict`), then accuracy, per-layer bits /
α / steps / MSE / accumulator bits, the plots, hardware tables, ONNX, next-step commands, timings, provenance.

The report only *reads* what a run wrote — ``results.json`` and ``plots/*.png`` — and never recomputes; every
section tolerates a missing stage (a run cut short, a field another stage did not write).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jinja2

from ..io import atomic_write_text, read_run_results
from .verdict import rtl_summary, verdict

PLOT_TITLES = {  # file-name prefix -> title, in report order
    "per_layer_mse": "Per-layer output MSE (quantized vs FP)",
    "weight_hist": "Target layer: fused weights with the weight levels",
    "act_hist": "Target layer: input activations with the activation levels",
    "levels": "Target layer input with plain b-bit and OMR levels",
    "cycles": "Cycles (log scale) and PE utilisation per layer on the array",
}
LAYER_COLUMNS = ["layer", "runs on", "W bits", "A bits", "α", "w step s'", "x step s'", "x zero point", "rel. MSE",
                 "psum bits needed", "cycles", "util. %"]
HW_HIDDEN = {"folder"}
SUMMARY_HIDDEN = {"logits", "array", "host_layers", "image"}  # shown elsewhere (verdict) or too long


def cell(v) -> str:
    """One table cell: floats to 4 significant digits, big integers with thousands separators."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else str(v)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = cell
    return env


def _method_rows(res: dict) -> dict[str, dict]:
    layers = res.get("method_report", {}).get("layers", {})
    if isinstance(layers, dict):
        return {k: v for k, v in layers.items() if isinstance(v, dict)}
    return {r["layer"]: r for r in layers if isinstance(r, dict) and "layer" in r}


def layer_rows(res: dict) -> list[dict]:
    """One row per quantized layer, merged from the per-layer MSE rows, the method report (α), the integer
    model's accumulator report and the whole-network hardware view."""
    method = _method_rows(res)
    acc = {r["layer"]: r for r in res.get("integer", {}).get("accumulators", [])}
    hw = res.get("hardware", {})
    net = {r["name"]: r for r in hw.get("network", [])}
    host = set(hw.get("network_summary", {}).get("host_layers", []))
    rows = []
    for r in res.get("layers", []):
        name = r["layer"]
        lo, hi = r.get("w_step_min"), r.get("w_step_max")
        n = net.get(name, {})
        rows.append({
            "layer": name, "runs on": "host" if name in host else ("array" if name in net else ""),
            "W bits": r.get("w_bits"), "A bits": r.get("a_bits"), "α": method.get(name, {}).get("alpha"),
            "w step s'": "" if lo is None else (cell(lo) if lo == hi else f"{lo:.3g} … {hi:.3g}"),
            "x step s'": r.get("x_step"), "x zero point": r.get("x_zero_point"), "rel. MSE": r.get("rel_mse"),
            "psum bits needed": n.get("psum_bits_needed", acc.get(name, {}).get("bits_needed")),
            "cycles": n.get("cycles"), "util. %": None if "utilisation" not in n else 100 * n["utilisation"]})
    return rows


def accuracy_rows(res: dict) -> list[dict]:
    m = res.get("metrics", {})
    fp, n = m.get("top1_fp"), m.get("test_images")
    method = res.get("config", {}).get("method", {}).get("name", "quantized")
    o = res.get("onnx", {})
    entries = [("FP (BN fused)", fp, n), ("RTN baseline", m.get("top1_rtn"), n), (f"{method} (fake-quant)",
               m.get("top1_quantized"), n), ("integer model", m.get("top1_integer"), n),
               ("ONNX, onnxruntime defaults", o.get("top1_onnx"), o.get("n"))]
    return [{"model": name, "top-1 %": 100 * v, "vs FP (pp)": None if fp is None else 100 * (v - fp), "images": k}
            for name, v, k in entries if v is not None]


def _plots(run_dir: Path) -> list[dict]:
    files = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    order = list(PLOT_TITLES)
    files.sort(key=lambda p: (order.index(p.stem.split(".")[0]) if p.stem.split(".")[0] in order else len(order),
                              p.name))
    out = []
    for p in files:
        kind, _, layer = p.stem.partition(".")
        title = PLOT_TITLES.get(kind, p.stem.replace("_", " ")).replace("Target layer", layer or "Target layer")
        out.append({"id": p.stem.replace(".", "-"), "title": title, "file": f"plots/{p.name}",
                    "src": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()})
    return out


def next_steps(res: dict, run_dir: Path) -> list[str]:
    d = str(run_dir)
    steps = [f"qmap eval --run {d}                      # the saved quantized model's top-1 again",
             f"qmap export onnx --run {d} --out {d}/model.onnx",
             f"python -c \"import qmap; print(qmap.load_quantized('{d}/quantized_model.safetensors').model)\""]
    hw = res.get("hardware", {})
    for r in hw.get("layers", [])[:1]:
        steps.append(f"qmap sim {d}/{r['folder']} --rtl icarus   # golden model + RTL on the exported files")
    skip = hw.get("rtl_skipped")
    if skip:
        steps.append(f"# RTL was skipped ({skip['reason']}): {skip['enable']}")
    steps.append(f"qmap compare {d} runs/OTHER_RUN --plot compare.png")
    return steps


def config_line(cfg: dict) -> str:
    q, method, data = cfg.get("quant", {}), cfg.get("method", {}), cfg.get("data", {})
    return (f"method {method.get('name')} {json.dumps(method.get('options', {}))}, "
            f"W{q.get('w_bits')}A{q.get('a_bits')}, per-channel weights {q.get('w_per_channel')}, "
            f"first/last layer bits {q.get('first_last_bits')}, seed {cfg.get('seed')}, "
            f"calibration {data.get('calib_size')} images")


def context(res: dict, run_dir: Path) -> dict:
    cfg, m = res.get("config", {}), res.get("metrics", {})
    q = cfg.get("quant", {})
    hw = res.get("hardware", {})
    net_rows = hw.get("network", [])
    net_cols = list(dict.fromkeys(k for r in net_rows for k in r))
    hw_rows = hw.get("layers", [])
    o = res.get("onnx")
    onnx_row = None if not o else {"file": res.get("files", {}).get("onnx", ""), "session": o.get("session"),
                                   "data": o.get("data"), "images": o.get("n"), "arg-max agreement %":
                                   100 * o.get("top1_agreement", 0.0), "max |Δlogit|": o.get("max_abs_diff"),
                                   "top-1 torch %": 100 * o.get("top1_torch", 0.0) if "top1_torch" in o else None,
                                   "top-1 ONNX %": 100 * o.get("top1_onnx", 0.0) if "top1_onnx" in o else None,
                                   "KiB": o.get("bytes", 0) / 1024, "opset": o.get("opset"), "nodes": o.get("nodes")}
    arr = hw.get("array", {})
    summary = (f"{cfg.get('method', {}).get('name')} W{q.get('w_bits')}A{q.get('a_bits')} on "
               f"{res.get('provenance', {}).get('checkpoint', '?')}; "
               f"{m.get('test_images', '?')} test images; {rtl_summary(res).split(' (')[0]}")
    return {
        "title": f"qmap report — {res.get('name', run_dir.name)}", "summary": summary, "verdict": verdict(res),
        "accuracy": accuracy_rows(res),
        "config_line": config_line(cfg),
        "layers": layer_rows(res), "layer_columns": LAYER_COLUMNS, "plots": _plots(run_dir),
        "hw_layers": hw_rows, "hw_columns": [c for c in dict.fromkeys(k for r in hw_rows for k in r)
                                             if c not in HW_HIDDEN],
        "network": net_rows, "network_columns": net_cols, "array": f"{arr.get('rows')}×{arr.get('cols')}",
        "network_image": hw.get("network_summary", {}).get("image"),
        "network_summary": [{k: v for k, v in hw["network_summary"].items() if k not in SUMMARY_HIDDEN}]
        if hw.get("network_summary") else [],
        "onnx": onnx_row, "onnx_columns": list(onnx_row) if onnx_row else [],
        "next_steps": next_steps(res, run_dir),
        "timings": [{"stage": k, "seconds": v} for k, v in res.get("timings", {}).items()],
        "provenance": [{"key": k, "value": json.dumps(v) if isinstance(v, dict) else v}
                       for k, v in res.get("provenance", {}).items()],
    }


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` from its ``results.json`` and ``plots/``."""
    run_dir = Path(run_dir)
    res = read_run_results(run_dir)
    ctx = context(res, run_dir)
    env = _env()
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, env.get_template("report.md.j2").render(**ctx))
    atomic_write_text(html_path, env.get_template("report.html.j2").render(**ctx))
    return md_path, html_path
