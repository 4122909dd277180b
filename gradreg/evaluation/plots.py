"""Reliability diagrams, importances and the comparison's cost figure, rendered with
matplotlib's Agg canvas (no pyplot global state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gradreg.evaluation.metrics import ReliabilityBins, named_reliability_series

# The reliability diagram's axes within its 6 × 6 in figure (fractions), room for the labels.
DIAGRAM_MARGINS = {"left": 0.13, "right": 0.97, "top": 0.94, "bottom": 0.09, "hspace": 0.06}
DIAGRAM_LAYOUTS = ("fixed", "constrained")


def write_reliability_diagram(
    path: str | os.PathLike[str],
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
    *,
    title: str | None = None,
    layout: str = "fixed",
) -> Path:
    """Write a PNG reliability diagram (accuracy vs confidence, bin counts below); return path.

    `series` is one ReliabilityBins or a mapping label -> ReliabilityBins overlaid in one plot.
    `layout`: ``fixed`` margins (`DIAGRAM_MARGINS`), or matplotlib's ``constrained`` layout,
    which fits any labels but draws the figure twice, taking about twice as long
    (`benchmarks/model_logging.py`); every trial of a sweep writes a diagram (issue 29).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    if layout not in DIAGRAM_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(DIAGRAM_LAYOUTS)}, got {layout!r}")
    named = named_reliability_series(series)

    fixed = layout == "fixed"
    figure = Figure(figsize=(6, 6), dpi=100, layout=None if fixed else "constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2,
        1,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1], **(DIAGRAM_MARGINS if fixed else {})},
    )
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


def write_cost_figure(
    path: str | os.PathLike[str],
    panels: Mapping[str, Mapping[str, tuple[float, float, float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Write a PNG of one panel per setting (panel -> method -> (x, y, y's standard error)),
    one point per method, x on a log scale; a method keeps its colour and marker in every
    panel. Return path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    if not panels or any(not points for points in panels.values()):
        raise ValueError("panels must be non-empty, each with at least one method -> point")
    for name, points in panels.items():
        bad = [m for m, (x, _, _) in points.items() if not (x > 0 and np.isfinite(x))]
        if bad:
            raise ValueError(f"panel {name!r}: x must be positive (log scale) for {bad}")
    methods = list(dict.fromkeys(m for points in panels.values() for m in points))
    palette, markers = _palette("tab10"), "osD^v<>ph*"
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.6 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes, (name, points) in zip(grid, panels.items(), strict=False):
        for method, (x, y, se) in points.items():
            i = methods.index(method)
            axes.errorbar(
                [x],
                [y],
                yerr=[se] if np.isfinite(se) else None,
                fmt=markers[i % len(markers)],
                color=palette[i % len(palette)],
                label=method,
                capsize=3,
            )
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(_plain))
        axes.xaxis.set_minor_formatter(FuncFormatter(_plain_2_3_5))
        axes.set_title(name)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, which="both")
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    by_label: dict[str, Any] = {}
    for axes in grid[: len(panels)]:
        handles, labels = axes.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            by_label.setdefault(label, handle)
    figure.legend(
        list(by_label.values()), list(by_label), loc="outside lower center", ncols=len(methods)
    )
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _plain(value: float, _: object) -> str:
    return f"{value:g}"


def _plain_2_3_5(value: float, _: object) -> str:
    """A log axis' minor label at 2, 3 and 5 times a power of ten only."""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (2.0, 3.0, 5.0) else ""


def _palette(name: str) -> list[tuple[float, float, float, float]]:
    """The colours of one of matplotlib's qualitative colour maps, in order (RGBA)."""
    colormap = matplotlib.colormaps[name]
    return [colormap(i) for i in range(colormap.N)]
