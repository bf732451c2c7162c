"""Benchmark results: ``benchmarks/results/<name>.json`` and ``.md``, both with provenance, written atomically."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from .provenance import provenance


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Render a list of dicts as a GitHub Markdown table (floats with 4 significant decimals)."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns or rows[0].keys())

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def median_of(values: Sequence[float]) -> dict:
    """Median and spread of repeated timings: {'median', 'min', 'max', 'n'}."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def write_result(name: str, data: dict, markdown_body: str, out_dir: str | Path = "benchmarks/results",
                 seed: int | None = None, **prov_extra) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (data + provenance) and ``<name>.md`` (body + provenance footer)."""
    prov = provenance(seed=seed, **prov_extra)
    out = Path(out_dir)
    jp, mp = out / f"{name}.json", out / f"{name}.md"
    atomic_write_json(jp, {"name": name, "provenance": prov, **data})
    m = prov["machine"]
    footer = (f"\n---\nCommand: `{prov['command']}`  \nDate: {prov['date']}  \ngit: `{prov['git_sha']}`  \n"
              f"Machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']} "
              f"({m.get('cuda_device', 'CPU')})\n")
    atomic_write_text(mp, f"# {name}\n\n{markdown_body}{footer}")
    return jp, mp
