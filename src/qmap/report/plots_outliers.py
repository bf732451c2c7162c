"""The seed's Figure 1: quantization levels of plain b-bit, OCS and OMR over one layer's activation histogram.

For an unsigned b-bit activation quantizer of step s (qmax = 2^b − 1, clip X = qmax·s), in the units of the
original activation:

- plain b-bit:  levels k·s,        k = 0 … qmax        (range [0, X], 2^b levels)
- OCS:          levels 2·s_ocs·k,  k = 0 … qmax        (a split channel carries v/2 twice: the range is squeezed
                                                        into half, so every value loses half its resolution)
- OMR:          levels k·s,        k = 0 … 2·qmax      (same step, range [0, 2X], 2^(b+1) − 1 levels)

A signed quantizer (GELU / h-swish inputs: codes qmin … qmax, zero point z) shifts the code range to
lo = qmin − z … hi = qmax − z; OMR then reaches k = lo … 2·hi (only the upper clip doubles).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import plt, save_figure


def outlier_levels(step: float, bits: int, ocs_step: float | None, codes: tuple[int, int] | None = None
                   ) -> dict[str, np.ndarray]:
    """The level sets of the module docstring, in original activation units (OCS left out without its step);
    ``codes`` = (lo, hi) = (qmin − z, qmax − z), default the unsigned (0, 2^b − 1)."""
    lo, hi = codes or (0, 2 ** bits - 1)
    k = np.arange(lo, hi + 1)
    levels = {f"plain {bits}-bit": k * step}
    if ocs_step is not None:
        levels[f"OCS ({bits}-bit, split channel)"] = 2 * ocs_step * k
    levels[f"OMR ({bits}-bit + copy)"] = np.arange(lo, 2 * hi + 1) * step
    return levels


def plot_outlier_levels(values: np.ndarray, step: float, bits: int, ocs_step: float | None, path: str | Path,
                        title: str = "", codes: tuple[int, int] | None = None) -> Path:
    """Histogram of ``values`` (log counts) with each method's levels drawn as vertical lines, one panel each."""
    levels = outlier_levels(step, bits, ocs_step, codes)
    hi = max(float(np.max(values)), *(float(v[-1]) for v in levels.values())) * 1.05
    low = min(0.0, float(np.min(values)), *(float(v[0]) for v in levels.values()))
    low -= 0.05 * (hi - low) if low < 0 else 0.0
    fig, axes = plt.subplots(len(levels), 1, figsize=(8, 2.2 * len(levels)), sharex=True)
    colors = {"plain": "#c00000", "OCS": "#ed7d31", "OMR": "#4472c4"}
    for ax, (name, lv) in zip(axes, levels.items()):
        color = colors[name.split()[0]]
        ax.hist(values, bins=200, range=(low, hi), color="#a5a5a5", log=True)
        for x in lv:
            ax.axvline(x, color=color, lw=0.8, alpha=0.8)
        ax.axvspan(lv[-1], hi, color=color, alpha=0.08)
        if lv[0] > low:
            ax.axvspan(low, lv[0], color=color, alpha=0.08)
        ax.set_title(f"{name}: {len(lv)} levels on [{lv[0]:.3g}, {lv[-1]:.3g}]", fontsize=9, loc="left")
        ax.set_ylabel("count")
    axes[-1].set_xlabel("activation value (shaded: clipped)")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
