"""``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG) for a run folder.

The report only *reads* what a run wrote — ``results.json`` and ``plots/*.png`` — and never recomputes.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..errors import QmapError
from ..io import atomic_write_text
from .results import markdown_table

PLOT_TITLES = {
    "per_layer_mse": "Per-layer output MSE (quantized vs FP)",
    "weight_hist": "Target layer fused weights with the 4-bit levels",
    "levels": "Activation histogram with OMR / OCS quantization levels",
    "cycles": "Cycles and PE utilisation per layer on the array",
    "accuracy": "Top-1 accuracy",
}


def _sections(res: dict) -> list[tuple[str, list[dict] | str]]:
    """(title, rows-or-text) sections in report order, from a results.json dict."""
    m = res.get("metrics", {})
    out: list[tuple[str, list[dict] | str]] = []
    acc = [{"model": k.removeprefix("top1_"), "top1 %": round(100 * v, 2)} for k, v in m.items()
           if k.startswith("top1_") and v is not None]
    out.append(("Accuracy", acc))
    cfg = res.get("config", {})
    q = cfg.get("quant", {})
    out.append(("Configuration", f"method **{cfg.get('method', {}).get('name')}**, W{q.get('w_bits')}A{q.get('a_bits')}"
                f", per-channel weights: {q.get('w_per_channel')}, first/last layer bits: {q.get('first_last_bits')}"
                f", seed {cfg.get('seed')}"))
    layers = res.get("layers", [])
    if layers:
        out.append(("Per-layer", layers))
    for key in ("integer", "hardware"):
        if res.get(key, {}).get("skipped"):
            out.append((f"{key.capitalize()} stage skipped", res[key]["skipped"]))
    hw = res.get("hardware", {})
    if hw.get("layers"):
        out.append(("Hardware: exported layers (golden model vs integer model vs RTL)", hw["layers"]))
    if hw.get("network"):
        out.append(("Hardware: whole network on the array", hw["network"]))
    if res.get("timings"):
        out.append(("Timings (s)", [{"step": k, "seconds": round(v, 2)} for k, v in res["timings"].items()]))
    prov = res.get("provenance", {})
    out.append(("Provenance", [{"key": k, "value": json.dumps(v) if isinstance(v, dict) else v}
                               for k, v in prov.items()]))
    return out


def _md_table_or_text(body) -> str:
    return markdown_table(body) if isinstance(body, list) else f"{body}\n"


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, float):
            v = f"{v:.4g}"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plots(run_dir: Path) -> list[tuple[str, Path]]:
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    return [(PLOT_TITLES.get(p.stem.split(".")[0], p.stem.replace("_", " ")), p) for p in plots]


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:right}th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee}h2{margin-top:1.6em}")


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` from its ``results.json`` and ``plots/``."""
    run_dir = Path(run_dir)
    try:
        res = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise QmapError(f"cannot read {run_dir / 'results.json'}: {e}") from None
    title = f"qmap report — {res.get('name', run_dir.name)}"
    sections = _sections(res)
    plots = _plots(run_dir)
    md = [f"# {title}\n"]
    for name, body in sections:
        md.append(f"## {name}\n\n{_md_table_or_text(body)}")
    for name, p in plots:
        md.append(f"## {name}\n\n![{name}](plots/{p.name})\n")
    hp = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for name, body in sections:
        content = _html_table(body) if isinstance(body, list) else f"<p>{html.escape(body)}</p>"
        hp.append(f"<h2>{html.escape(name)}</h2>{content}")
    for name, p in plots:
        b64 = base64.b64encode(p.read_bytes()).decode()
        hp.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    hp.append("</body></html>")
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(html_path, "\n".join(hp))
    return md_path, html_path
