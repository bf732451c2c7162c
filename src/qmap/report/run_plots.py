"""Plots of one run, drawn from its results dict into ``plots/*.png`` (the report embeds them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import grouped_bars, plt, save_figure, weight_histogram_with_levels


def plot_per_layer_mse(layers: list[dict], path: Path) -> None:
    grouped_bars(path, [r["layer"] for r in layers], {"quantized vs FP": [r["rel_mse"] for r in layers]},
                 ylabel="relative output MSE", title="per-layer output MSE")


def plot_weight_levels(weights: np.ndarray, grid_step: float, step: float, qmin: int, qmax: int, alpha: float | None,
                       layer: str, path: Path) -> None:
    """The layer's fused weights with its integer levels k·step; with α-scaling also the levels at α = 1."""
    k = np.arange(qmin, qmax + 1)
    levels, labels = [k * step], [f"levels (step {step:.3g})" if alpha is None else f"levels at α = {alpha:.3f}"]
    if alpha is not None:
        levels.insert(0, k * grid_step)
        labels.insert(0, "levels at α = 1")
    weight_histogram_with_levels(path, weights, levels, labels, title=f"{layer}: fused weights")


def plot_activation_levels(values: np.ndarray, step: float, zero_point: float, qmin: int, qmax: int, layer: str,
                           path: Path) -> None:
    """Histogram of a layer's FP input (calibration images) with its activation levels (k − z)·s'."""
    levels = (np.arange(qmin, qmax + 1) - zero_point) * step
    weight_histogram_with_levels(path, values, [levels], [f"{qmax - qmin + 1} levels (step {step:.3g})"],
                                 title=f"{layer}: input activations", xlabel="activation value")


def plot_cycles(rows: list[dict], path: Path) -> None:
    """Cycles per layer on a log axis (layers differ by orders of magnitude) and PE utilisation."""
    fig, ax1 = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 3.5))
    x = range(len(rows))
    ax1.bar(x, [r["cycles"] for r in rows], color="#70ad47")
    ax1.set_yscale("log")
    ax1.set_ylabel("cycles (log)")
    ax1.set_xticks(x, [r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax2 = ax1.twinx()
    ax2.plot(x, [100 * r["utilisation"] for r in rows], "o-", color="#c00000")
    ax2.set_ylabel("PE utilisation %")
    ax2.set_ylim(0, 105)
    save_figure(fig, path)


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
