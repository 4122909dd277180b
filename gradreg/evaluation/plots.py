"""Reliability diagrams rendered with matplotlib's Agg canvas (no pyplot global state)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradreg.evaluation.metrics import ReliabilityBins


def _as_named_series(
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
) -> dict[str, ReliabilityBins]:
    if isinstance(series, ReliabilityBins):
        return {"model": series}
    if not isinstance(series, Mapping):
        raise TypeError(
            f"series must be a ReliabilityBins or a mapping label -> ReliabilityBins, "
            f"got {type(series).__name__}"
        )
    if not series:
        raise ValueError("series mapping is empty; pass at least one label -> ReliabilityBins")
    for label, bins in series.items():
        if not isinstance(bins, ReliabilityBins):
            raise TypeError(
                f"series[{label!r}] must be a ReliabilityBins, got {type(bins).__name__}"
            )
    return {str(label): bins for label, bins in series.items()}


def write_reliability_diagram(
    path: str | os.PathLike[str],
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG reliability diagram (accuracy vs confidence, bin counts below); return path.

    `series` is one ReliabilityBins or a mapping label -> ReliabilityBins overlaid in one plot.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    named = _as_named_series(series)

    figure = Figure(figsize=(6, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")

    palette = _palette("tab10" if len(named) <= 10 else "tab20")
    for i, (label, bins) in enumerate(named.items()):
        color = palette[i % len(palette)]
        filled = bins.count > 0
        top.plot(
            bins.confidence[filled],
            bins.accuracy[filled],
            marker="o",
            color=color,
            label=f"{label} (ECE {bins.ece:.3f})",
        )
        edges = np.append(bins.lower, bins.upper[-1])
        bottom.stairs(bins.count, edges, color=color, linewidth=1.5)

    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title or "Reliability diagram")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("count")
    bottom.grid(alpha=0.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_param_importances(
    path: str | os.PathLike[str], importances: Mapping[str, float], *, title: str | None = None
) -> Path:
    """Write a PNG bar chart of parameter importances (name -> share), largest on top; return
    path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    if not importances:
        raise ValueError("importances is empty; pass at least one parameter -> importance")
    ranked = sorted(importances.items(), key=lambda item: item[1])  # barh draws bottom-up
    names = [str(name) for name, _ in ranked]
    values = [float(value) for _, value in ranked]

    figure = Figure(figsize=(6, 1.5 + 0.4 * len(ranked)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    bars = axes.barh(names, values, color=_palette("tab10")[0])
    axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize="small")
    axes.set_xlim(0, max(1.0, max(values)) * 1.1)
    axes.set_xlabel("importance")
    axes.set_title(title or "Parameter importances")
    axes.grid(axis="x", alpha=0.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _palette(name: str) -> list[tuple[float, float, float, float]]:
    """The colours of one of matplotlib's qualitative colour maps, in order (RGBA)."""
    colormap = matplotlib.colormaps[name]
    return [colormap(i) for i in range(colormap.N)]
