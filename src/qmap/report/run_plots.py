"""Plots of one run, drawn from its results dict into ``plots/*.png`` (the report embeds them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_layer_mse(layers: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layers)), 3.5))
    ax.bar(range(len(layers)), [r["rel_mse"] for r in layers], color="#4472c4")
    ax.set_xticks(range(len(layers)), [r["layer"] for r in layers], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relative output MSE")
    ax.set_yscale("log")
    _save(fig, path)


def plot_cycles(rows: list[dict], path: Path) -> None:
    fig, ax1 = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 3.5))
    x = range(len(rows))
    ax1.bar(x, [r["cycles"] for r in rows], color="#70ad47")
    ax1.set_ylabel("cycles")
    ax1.set_xticks(x, [r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax2 = ax1.twinx()
    ax2.plot(x, [100 * r["utilisation"] for r in rows], "o-", color="#c00000")
    ax2.set_ylabel("PE utilisation %")
    ax2.set_ylim(0, 105)
    _save(fig, path)


def plot_run(results: dict, folder: Path) -> list[Path]:
    """Draw every plot the results support; returns the files written."""
    written = []
    if results.get("layers"):
        plot_per_layer_mse(results["layers"], folder / "per_layer_mse.png")
        written.append(folder / "per_layer_mse.png")
    net = results.get("hardware", {}).get("network")
    if net:
        plot_cycles(net, folder / "cycles.png")
        written.append(folder / "cycles.png")
    return written
