"""The sweep's own report, beside its points: ``sweep.json`` (one row per point plus the time of every
invocation), ``report.md`` (tables) and ``plots/`` (accuracy vs bit width per series, accuracy vs wall time,
spread over the repeat axis). Every figure is read from the points' ``results.json`` (the rows ``qmap compare``
prints), never recomputed; every file is written atomically.

Roles of the axes: the *x* axis (``report.x``, default ``bits``) gives the columns of the accuracy table and the
x of the bit-width plot; the *repeat* axis (``report.repeat``, default ``seed``) is what a spread is taken over
(median, min, max); the labels of the other axes name a point's *series* (one line per series, e.g. a method).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import EXIT_INTERNAL
from ..io import atomic_write_json, atomic_write_text
from ..report.compare import run_row
from ..report.plots import COLORS, plt, save_figure
from ..report.results import markdown_table
from ..runfolder import read_marker

PLOTS = ("accuracy_vs_bits.png", "accuracy_vs_time.png", "seed_spread.png")


def point_row(sweep, planned, outcome: dict | None) -> dict:
    """One point: its labels, status, and (when its folder holds this config's run) the ``qmap compare`` row
    plus the seed and the run's wall time (sum of its stage timings)."""
    p = planned.point
    row = {"point": p.name, **p.labels, "status": "not run", "folder": f"points/{p.name}"}
    marker = read_marker(planned.folder)
    if marker is not None and marker.get("config_fingerprint") == planned.fingerprint:
        row["status"] = marker.get("status", "running")
        row.update({k: v for k, v in run_row(planned.folder).items() if k != "run"})
        row["seed"] = marker.get("config", {}).get("seed")
        row["wall_s"] = round(sum(marker.get("timings", {}).values()), 1)
        if marker.get("error"):
            row["error"] = marker["error"]
    if outcome is not None and outcome["status"] == "failed":
        row.update(status="failed", error=outcome.get("error"), exit_code=outcome.get("exit_code", EXIT_INTERNAL))
    x = p.labels.get(sweep.x_axis) if sweep.x_axis else row.get("bits")
    series = [lab for a, lab in p.labels.items() if a not in (sweep.x_axis, sweep.repeat_axis)]
    row["x"], row["series"] = x, "-".join(series) or sweep.name
    return row


def groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Complete rows grouped by (series, x), i.e. the repeats of one setting."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "complete" and r.get("top1_quantized") is not None:
            out.setdefault((r["series"], r["x"]), []).append(r)
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def build_report(sweep, planned, outcomes: dict[str, dict], invocation: dict, previous: dict | None) -> dict:
    rows = [point_row(sweep, p, outcomes.get(p.point.name)) for p in planned]
    xs = list(dict.fromkeys(r["x"] for r in rows))
    series = list(dict.fromkeys(r["series"] for r in rows))
    table = {f"{s}|{x}": spread([r["top1_quantized"] for r in g]) for (s, x), g in groups(rows).items()}
    invocations = [i for i in (previous or {}).get("invocations", []) if i.get("started") != invocation["started"]]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "failed", "running", "not run")}
    return {"sweep": sweep.name, "source": sweep.source, "axes": sweep.axes,
            "roles": {"x": sweep.x_axis, "repeat": sweep.repeat_axis}, "x": xs, "series": series,
            "counts": counts, "points": rows, "top1_quantized": table,
            "invocations": [*invocations, {**invocation, **invocation_times(invocation, rows, outcomes)}]}


def invocation_times(invocation: dict, rows: list[dict], outcomes: dict[str, dict]) -> dict:
    """The invocation's wall time against the sum of the wall times of the points it ran (the speed-up of
    running them side by side; each point's time is its ``qmap run`` inside the Ray worker)."""
    ran = [o["wall_s"] for o in outcomes.values() if "wall_s" in o]
    total = sum(ran)
    wall = invocation.get("wall_s", 0.0)
    return {"points_finished": len(outcomes), "points_wall_s_sum": round(total, 1), "wall_s": round(wall, 1),
            "speedup": round(total / wall, 2) if wall > 0 and ran else None}


def _cell(s: dict | None) -> str:
    if s is None:
        return ""
    if s["n"] == 1:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}, n={s['n']})"


def report_markdown(rep: dict, plot_dir: str = "plots") -> str:
    """Tables of the report: top-1 by series and x, every point, and the time of each invocation (links to the
    plots in ``plot_dir``, relative to the Markdown file)."""
    rows = rep["points"]
    c = rep["counts"]
    fps = sorted({r["top1_fp"] for r in rows if r.get("top1_fp") is not None})
    fp = f"FP top-1: {fps[0]:.2f} %." if len(fps) == 1 else ("FP top-1 per point in the table." if fps else "")
    repeat = f" over `{rep['roles']['repeat']}`" if rep["roles"]["repeat"] else ""
    pivot = [{"series": s, **{x: _cell(rep["top1_quantized"].get(f"{s}|{x}")) for x in rep["x"]}}
             for s in rep["series"]]
    axes = "; ".join(f"{a}: {', '.join(levels)}" for a, levels in rep["axes"].items())
    cols = ["point", "status", "method", "bits", "seed", "top1_fp", "top1_quantized", "top1_integer", "gap_pp",
            "quantize_s", "wall_s", "error"]
    points = [{k: "" if r.get(k) is None else r.get(k, "") for k in cols} for r in rows]
    times = [{"started": i["started"], "cluster CPUs": i.get("cluster_cpus", ""), "points run": i["points_run"],
              "skipped (complete)": i["points_skipped"], "wall s": i["wall_s"],
              "sum of point wall s": i["points_wall_s_sum"], "speed-up": i["speedup"] or ""}
             for i in rep["invocations"]]
    return (f"Sweep `{rep['sweep']}` ({rep['source']}): {len(rows)} points, {c['complete']} complete, "
            f"{c['failed']} failed, {c['running']} unfinished, {c['not run']} not run. Axes: {axes}.\n\n"
            f"## Top-1 % of the quantized model (median{repeat}, min–max when repeated)\n\n{fp}\n\n"
            + markdown_table(pivot)
            + "\n## Points\n\n" + markdown_table(points)
            + "\n## Time per invocation\n\nWall time of `qmap sweep` (Ray start-up included) against the sum of the "
              "wall times of the `qmap run`s it finished (each measured inside its Ray worker); speed-up = sum / "
              "wall.\n\n" + markdown_table(times)
            + "\nPlots: " + ", ".join(f"[{p}]({plot_dir}/{p})" for p in PLOTS) + "\n")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)


def plot_report(rep: dict, folder: Path) -> None:
    """The three plots of the report (each drawn even when it has a single point, so the set is always whole)."""
    xs, series, table = rep["x"], rep["series"], rep["top1_quantized"]
    done = [r for r in rep["points"] if r["status"] == "complete" and r.get("top1_quantized") is not None]
    fps = [r["top1_fp"] for r in done if r.get("top1_fp") is not None]

    _, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, s in enumerate(series):
        pts = [(k, table[f"{s}|{x}"]) for k, x in enumerate(xs) if f"{s}|{x}" in table]
        if pts:
            color = COLORS[i % len(COLORS)]
            ax.plot([k for k, _ in pts], [v["median"] for _, v in pts], "o-", color=color, label=s)
            ax.vlines([k for k, _ in pts], [v["min"] for _, v in pts], [v["max"] for _, v in pts], color=color)
    if fps:
        ax.axhline(statistics.median(fps), color="k", linestyle="--", linewidth=1, label="FP")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(rep["roles"]["x"] or "bits")
    ax.set_ylabel("top-1 % (quantized)")
    ax.set_title(f"{rep['sweep']}: accuracy vs bit width", fontsize=10)
    _legend(ax)
    save_figure(ax.figure, folder / PLOTS[0])

    _, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, s in enumerate(series):
        pts = [r for r in done if r["series"] == s]
        if pts:
            ax.scatter([r["wall_s"] for r in pts], [r["top1_quantized"] for r in pts], color=COLORS[i % len(COLORS)],
                       label=s, s=18)
    ax.set_xscale("log")
    ax.set_xlabel("wall time of the point's qmap run (s, log)")
    ax.set_ylabel("top-1 % (quantized)")
    ax.set_title(f"{rep['sweep']}: accuracy vs wall time", fontsize=10)
    _legend(ax)
    save_figure(ax.figure, folder / PLOTS[1])

    _, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(table)), 4.0))
    keys = list(table)
    for k, key in enumerate(keys):
        s, x = key.split("|", 1)
        vals = [r["top1_quantized"] for r in done if r["series"] == s and r["x"] == x]
        ax.scatter([k] * len(vals), vals, color=COLORS[series.index(s) % len(COLORS)], s=16)
        ax.hlines(table[key]["median"], k - 0.3, k + 0.3, color="k", linewidth=1)
    ax.set_xticks(range(len(keys)), [k.replace("|", "\n") for k in keys], fontsize=7, rotation=60)
    ax.set_ylabel("top-1 % (quantized)")
    repeat = rep["roles"]["repeat"]
    ax.set_title(f"{rep['sweep']}: spread over {repeat} (bar: median)" if repeat else
                 f"{rep['sweep']}: one point per setting (no repeat axis)", fontsize=10)
    save_figure(ax.figure, folder / PLOTS[2])


def write_sweep_report(sweep, out: Path, planned, outcomes: dict[str, dict], invocation: dict) -> dict:
    """(Re)write ``sweep.json``, ``report.md`` and ``plots/`` in ``out``; returns the report dict."""
    try:
        previous = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        previous = None
    rep = build_report(sweep, planned, outcomes, invocation, previous)
    plot_report(rep, out / "plots")
    atomic_write_text(out / "report.md", f"# Sweep {sweep.name}\n\n{report_markdown(rep)}")
    atomic_write_json(out / "sweep.json", rep)
    return rep
