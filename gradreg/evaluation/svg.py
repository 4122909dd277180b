"""The reliability diagram as SVG, written directly: no matplotlib.

Every trial of a sweep writes its diagram, and matplotlib's Agg canvas took about 80 ms of each
(its import another 0.5 s in a fresh process), most of a tracked trial's overhead after its
model (issue 29). The picture is the PNG's (`gradreg.evaluation.plots.write_reliability_diagram`):
accuracy against confidence with the diagonal, and each bin's count below; MLflow's UI shows an
SVG artifact as an image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from gradreg.evaluation.metrics import ReliabilityBins, named_reliability_series

# matplotlib's tab10, so that the SVG and the PNG colour series alike.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
WIDTH = HEIGHT = 600
LEFT, RIGHT, TOP, BOTTOM = 70, 18, 40, 52  # margins, px
GAP = 24  # between the accuracy panel and the counts below it, px
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def write_reliability_svg(
    path: str | os.PathLike[str],
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
    *,
    title: str | None = None,
) -> Path:
    """Write an SVG reliability diagram (accuracy vs confidence, bin counts below); return path.

    ``series`` is one ReliabilityBins or a mapping label -> ReliabilityBins overlaid in one
    plot, as for the PNG."""
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise ValueError(f"path must end in .svg, got {str(path)!r}")
    text = reliability_svg(series, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def reliability_svg(
    series: ReliabilityBins | Mapping[str, ReliabilityBins], *, title: str | None = None
) -> str:
    """The SVG document of `write_reliability_svg`."""
    named = named_reliability_series(series)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM - GAP
    top_h, count_h = plot_h * 3 / 4, plot_h / 4
    top_y0 = TOP  # the accuracy panel's upper edge
    count_y0 = TOP + top_h + GAP

    def x(value: float) -> float:
        return LEFT + value * plot_w

    def y_top(value: float) -> float:
        return top_y0 + (1 - value) * top_h

    most = max(int(bins.count.max(initial=0)) for bins in named.values())
    count_max = _nice_ceiling(most)

    def y_count(value: float) -> float:
        return count_y0 + (1 - value / count_max) * count_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        _text(WIDTH / 2, TOP - 14, title or "Reliability diagram", size=14, anchor="middle"),
    ]
    # Frames and grids: the accuracy panel, then the counts.
    for tick in TICKS:
        parts.append(_line(x(tick), top_y0, x(tick), top_y0 + top_h, grid=True))
        parts.append(_line(LEFT, y_top(tick), LEFT + plot_w, y_top(tick), grid=True))
        parts.append(_line(x(tick), count_y0, x(tick), count_y0 + count_h, grid=True))
        parts.append(_text(LEFT - 6, y_top(tick) + 4, f"{tick:.1f}", anchor="end"))
        parts.append(_text(x(tick), count_y0 + count_h + 16, f"{tick:.1f}", anchor="middle"))
    for tick in (0, count_max / 2, count_max):
        parts.append(_line(LEFT, y_count(tick), LEFT + plot_w, y_count(tick), grid=True))
        parts.append(_text(LEFT - 6, y_count(tick) + 4, f"{tick:g}", anchor="end"))
    parts.append(_frame(LEFT, top_y0, plot_w, top_h))
    parts.append(_frame(LEFT, count_y0, plot_w, count_h))
    parts.append(
        f'<line x1="{x(0):.1f}" y1="{y_top(0):.1f}" x2="{x(1):.1f}" y2="{y_top(1):.1f}" '
        'stroke="grey" stroke-width="1.5" stroke-dasharray="6 4"/>'
    )
    legend = [("perfect calibration", "grey", True)]
    for i, (label, bins) in enumerate(named.items()):
        color = PALETTE[i % len(PALETTE)]
        filled = [k for k in range(bins.n_bins) if bins.count[k] > 0]
        points = [(x(bins.confidence[k]), y_top(bins.accuracy[k])) for k in filled]
        if points:
            parts.append(
                f'<polyline points="{_points(points)}" fill="none" stroke="{color}" '
                'stroke-width="1.5"/>'
            )
            parts.extend(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"/>' for px, py in points
            )
        stairs = []
        for k in range(bins.n_bins):
            level = y_count(float(bins.count[k]))
            stairs += [(x(bins.lower[k]), level), (x(bins.upper[k]), level)]
        parts.append(
            f'<polyline points="{_points(stairs)}" fill="none" stroke="{color}" '
            'stroke-width="1.5"/>'
        )
        legend.append((f"{label} (ECE {bins.ece:.3f})", color, False))
    # The legend on a light box over whatever it covers, as matplotlib draws its own.
    width, height = 48 + 6.2 * max(len(label) for label, _, _ in legend), 16 * len(legend) + 4
    parts.append(
        f'<rect x="{LEFT + 4}" y="{top_y0 + 4}" width="{width:.1f}" height="{height}" '
        'fill="white" fill-opacity="0.8" stroke="#cccccc" rx="3"/>'
    )
    for row, (label, color, dashed) in enumerate(legend):
        y = top_y0 + 16 + 16 * row
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(
            f'<line x1="{LEFT + 10}" y1="{y - 4}" x2="{LEFT + 34}" y2="{y - 4}" '
            f'stroke="{color}" stroke-width="1.5"{dash}/>'
        )
        parts.append(_text(LEFT + 40, y, label, size=11))
    parts.append(_text(WIDTH / 2, HEIGHT - 12, "confidence (max probability)", anchor="middle"))
    parts.append(_text(18, top_y0 + top_h / 2, "accuracy", anchor="middle", rotate=True))
    parts.append(_text(18, count_y0 + count_h / 2, "count", anchor="middle", rotate=True))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above ``value`` (1 for an empty diagram)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _line(x1: float, y1: float, x2: float, y2: float, *, grid: bool = False) -> str:
    stroke = 'stroke="#b0b0b0" stroke-opacity="0.3"' if grid else 'stroke="black"'
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {stroke}/>'


def _frame(left: float, top: float, width: float, height: float) -> str:
    return (
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}" '
        'fill="none" stroke="black"/>'
    )


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = 12,
    anchor: str = "start",
    rotate: bool = False,
) -> str:
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor={quoteattr(anchor)}'
        f"{turn}>{escape(text)}</text>"
    )
