"""Compare finished runs: one row per run folder (method, bits, top-1 FP / quantized / integer, gap, time),
as a Markdown table and a chart of each run's accuracy change against FP (in percentage points, so small
differences stay visible). Reads each folder's ``results.json`` only; :func:`comparability_warnings` names
what makes two runs' accuracies not comparable (test split, number of test images, model)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QmapError
from .results import markdown_table


def _mapping(d, key: str) -> dict:
    v = d.get(key, {})
    return v if isinstance(v, dict) else {}


def read_results(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "results.json"
    try:
        res = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise QmapError(f"cannot read {p}: {' '.join(str(e).split())}") from None
    if not isinstance(res, dict) or not isinstance(res.get("config"), dict) \
            or not isinstance(res.get("metrics"), dict):
        raise QmapError(f"{p}: not a qmap results.json (a JSON object with 'config' and 'metrics' objects)")
    return res


def run_row(run_dir: str | Path) -> dict:
    res = read_results(run_dir)
    cfg, m = _mapping(res, "config"), _mapping(res, "metrics")
    q = _mapping(cfg, "quant")

    def pct(key):
        v = m.get(key)
        return round(100 * v, 2) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    fp, qt = pct("top1_fp"), pct("top1_quantized")
    seconds = _mapping(res, "timings").get("quantize", 0.0)
    data, prov = _mapping(cfg, "data"), _mapping(res, "provenance")
    return {"run": str(res.get("name", Path(run_dir).name)), "method": _mapping(cfg, "method").get("name"),
            "bits": f"W{q.get('w_bits')}A{q.get('a_bits')}", "status": res.get("status", "unknown"),
            "top1_fp": fp, "top1_quantized": qt,
            "top1_integer": pct("top1_integer"), "gap_pp": None if fp is None or qt is None else round(fp - qt, 2),
            "quantize_s": round(seconds, 1) if isinstance(seconds, (int, float)) else None,
            "array_cycles": _mapping(_mapping(res, "hardware"), "network_summary").get("cycles"),
            "peak_rss_mb": round(res["peak_rss_bytes"] / 2**20) if isinstance(res.get("peak_rss_bytes"), int) else None,
            "test_split": data.get("test_split"), "test_images": m.get("test_images", data.get("test_limit")),
            "model": prov.get("checkpoint_sha256") or _mapping(cfg, "model").get("checkpoint")}


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


COMPARABLE = {"test_split": "test split", "test_images": "number of test images", "model": "model checkpoint"}


def comparability_warnings(rows: list[dict]) -> list[str]:
    """One line per property that differs between the runs (their accuracies are then not comparable), and
    one per run that did not complete."""
    out = []
    for key, what in COMPARABLE.items():
        values = {str(r.get(key)) for r in rows}
        if len(values) > 1:
            shown = ", ".join(f"{r['run']}: {str(r.get(key))[:16]}" for r in rows)
            out.append(f"runs differ in {what} ({shown}); their accuracies are not comparable")
    out += [f"run {r['run']} has status {r['status']!r}, not 'complete'" for r in rows
            if r.get("status") not in ("complete", "unknown")]
    return out


def plot_comparison(rows: list[dict], path: str | Path) -> None:
    """Bars of each run's quantized − FP top-1 in percentage points (integer model as dots), on an axis
    fitted to the differences, written atomically to ``path`` (.png, .svg or .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_savefig

    def delta(r, key):
        return None if r[key] is None or r["top1_fp"] is None else r[key] - r["top1_fp"]

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
    x = range(len(rows))
    q = [delta(r, "top1_quantized") for r in rows]
    ax.bar(x, [v or 0 for v in q], color="#4472c4", label="quantized − FP")
    i = [delta(r, "top1_integer") for r in rows]
    ax.plot([k for k, v in zip(x, i) if v is not None], [v for v in i if v is not None], "ko", markersize=4,
            label="integer model − FP")
    for k, v in zip(x, q):
        if v is not None:
            ax.annotate(f"{v:+.2f}", (k, v), ha="center", va="top" if v < 0 else "bottom", fontsize=7)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(list(x), [f"{r['run']}\n{r['method']} {r['bits']}" for r in rows], fontsize=7)
    ax.set_ylabel("top-1 change vs FP (pp)")
    ax.legend(loc="best", fontsize=7)
    ax.margins(y=0.2)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)


def comparison_markdown(rows: list[dict]) -> str:
    return markdown_table(rows)
