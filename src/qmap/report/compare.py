"""Compare finished runs: one row per run folder (method, bits, top-1 FP / quantized / integer, gap, time),
as a Markdown table and a bar chart. Reads each folder's ``results.json`` only."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QmapError
from .results import markdown_table


def run_row(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "results.json"
    try:
        res = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise QmapError(f"cannot read {p}: {e}") from None
    cfg, m = res.get("config", {}), res.get("metrics", {})
    q = cfg.get("quant", {})

    def pct(key):
        return None if m.get(key) is None else round(100 * m[key], 2)

    fp, qt = pct("top1_fp"), pct("top1_quantized")
    return {"run": res.get("name", Path(run_dir).name), "method": cfg.get("method", {}).get("name"),
            "bits": f"W{q.get('w_bits')}A{q.get('a_bits')}", "top1_fp": fp, "top1_quantized": qt,
            "top1_integer": pct("top1_integer"), "gap_pp": None if fp is None or qt is None else round(fp - qt, 2),
            "quantize_s": round(res.get("timings", {}).get("quantize", 0.0), 1),
            "array_cycles": res.get("hardware", {}).get("network_summary", {}).get("cycles")}


def expand_sweeps(paths: list[str | Path]) -> list[Path]:
    """Run folders, with a ``qmap sweep`` folder (one holding ``sweep.json``) replaced by its points' folders
    in sweep order (points without a run yet are left out)."""
    out = []
    for path in map(Path, paths):
        if (path / "sweep.json").is_file() and not (path / "results.json").exists():
            try:
                points = json.loads((path / "sweep.json").read_text())["points"]
            except (OSError, ValueError, KeyError) as e:
                raise QmapError(f"cannot read {path / 'sweep.json'}: {e}") from None
            out += [path / p["folder"] for p in points if (path / p["folder"] / "results.json").is_file()]
        else:
            out.append(path)
    return out


def compare_runs(run_dirs: list[str | Path]) -> list[dict]:
    """One row per run folder; a sweep folder stands for all its points."""
    return [run_row(d) for d in expand_sweeps(run_dirs)]


def plot_comparison(rows: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
    labels = [f"{r['run']}\n{r['method']} {r['bits']}" for r in rows]
    ax.bar(range(len(rows)), [r["top1_quantized"] or 0 for r in rows], color="#4472c4", label="quantized")
    ax.plot(range(len(rows)), [r["top1_fp"] or 0 for r in rows], "k_", markersize=30, label="FP")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("top-1 %")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_markdown(rows: list[dict]) -> str:
    return markdown_table(rows)
