"""General plotting helpers (matplotlib, Agg backend) shared by benchmarks and the report.

Every helper takes either a matplotlib ``Axes`` to draw into or a file path to save a one-panel figure to (PNG),
so callers can compose panels or write single plots with the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from ..io import atomic_savefig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ("#c00000", "#4472c4", "#ed7d31", "#70ad47", "#7030a0", "#5b9bd5", "#ffc000", "#7f7f7f")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """tight_layout, write ``path`` atomically (creating its folder) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _axes(ax_or_path, figsize: tuple[float, float]):
    """(axes, path or None): a fresh figure when given a path."""
    if isinstance(ax_or_path, (str, Path)):
        _, ax = plt.subplots(figsize=figsize)
        return ax, Path(ax_or_path)
    return ax_or_path, None


def weight_histogram_with_levels(ax_or_path, weights, levels_list: Sequence, labels: Sequence[str],
                                 bins: int = 120, title: str = "", log: bool = True,
                                 xlabel: str = "weight value") -> Path | None:
    """Histogram of ``weights`` with each level set of ``levels_list`` drawn as vertical lines (one colour and
    legend entry per set, e.g. the 4-bit grid at α = 1 and at the chosen α). Returns the path when saving."""
    ax, path = _axes(ax_or_path, (8, 3.6))
    w = np.asarray(weights, dtype=np.float64).ravel()
    lo = min([w.min(), *(np.min(lv) for lv in levels_list)])
    hi = max([w.max(), *(np.max(lv) for lv in levels_list)])
    pad = 0.03 * (hi - lo)
    ax.hist(w, bins=bins, range=(lo - pad, hi + pad), color="#a5a5a5", log=log,
            label=f"{xlabel.split()[0]}s (n={w.size})")
    for i, (levels, label) in enumerate(zip(levels_list, labels)):
        color = COLORS[i % len(COLORS)]
        style = ("-", "--", ":", "-.")[i % 4]
        for j, x in enumerate(np.asarray(levels, dtype=np.float64).ravel()):
            ax.axvline(x, color=color, linestyle=style, linewidth=1.0, alpha=0.85, label=label if j == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count" + (" (log)" if log else ""))
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(ax.figure, path) if path else None


def grouped_bars(ax_or_path, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                 log: bool = True, title: str = "", rotation: int = 60) -> Path | None:
    """Grouped bars: one group per label (a layer, a bit setting), one bar per named series (e.g. MSE
    before / after, or one per method)."""
    ax, path = _axes(ax_or_path, (max(6.0, 0.55 * len(groups) * max(1, len(series))), 3.8))
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xticks(x, list(groups), rotation=rotation, ha="right" if rotation else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(ax.figure, path) if path else None
