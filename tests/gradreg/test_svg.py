"""The reliability diagram as SVG: what it draws is the bins, read back from the document."""

from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pytest

from gradreg.evaluation.metrics import ReliabilityBins, reliability_bins
from gradreg.evaluation.svg import (
    BOTTOM,
    GAP,
    HEIGHT,
    LEFT,
    PALETTE,
    RIGHT,
    TOP,
    WIDTH,
    _nice_ceiling,
    write_reliability_svg,
)

SVG = "{http://www.w3.org/2000/svg}"
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM - GAP
TOP_H, COUNT_H = PLOT_H * 3 / 4, PLOT_H / 4
PIXEL = 0.05  # coordinates are written to 0.1 px


def make_bins(seed: int, n: int = 400) -> ReliabilityBins:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n)
    labels = rng.integers(0, 3, size=n)
    return reliability_bins(probs, labels, n_bins=10)


def polylines(root: ElementTree.Element, color: str) -> list[list[tuple[float, float]]]:
    found = []
    for line in root.iter(f"{SVG}polyline"):
        if line.get("stroke") == color:
            pairs = (point.split(",") for point in line.get("points", "").split())
            found.append([(float(x), float(y)) for x, y in pairs])
    return found


def test_the_diagram_draws_each_bins_accuracy_and_count(tmp_path) -> None:
    bins = make_bins(0)
    target = write_reliability_svg(tmp_path / "nested" / "reliability.svg", {"vl": bins})
    assert target == tmp_path / "nested" / "reliability.svg"
    root = ElementTree.parse(target).getroot()
    assert (root.tag, root.get("width"), root.get("height")) == (f"{SVG}svg", "600", "600")

    accuracy, counts = polylines(root, PALETTE[0])
    filled = bins.count > 0
    assert len(accuracy) == filled.sum()
    confidence = [(x - LEFT) / PLOT_W for x, _ in accuracy]
    shown = [1 - (y - TOP) / TOP_H for _, y in accuracy]
    assert np.allclose(confidence, bins.confidence[filled], atol=PIXEL / PLOT_W)
    assert np.allclose(shown, bins.accuracy[filled], atol=PIXEL / TOP_H)

    # The counts as stairs over each bin's edges, on an axis up to a round number.
    top = _nice_ceiling(int(bins.count.max()))
    assert len(counts) == 2 * bins.n_bins
    count_y0 = TOP + TOP_H + GAP
    levels = [(1 - (y - count_y0) / COUNT_H) * top for _, y in counts[::2]]
    assert np.allclose(levels, bins.count, atol=PIXEL / COUNT_H * top)
    edges = [(x - LEFT) / PLOT_W for x, _ in counts]
    assert np.allclose(edges[::2], bins.lower, atol=PIXEL / PLOT_W)
    assert np.allclose(edges[1::2], bins.upper, atol=PIXEL / PLOT_W)

    texts = [text.text for text in root.iter(f"{SVG}text")]
    assert f"vl (ECE {bins.ece:.3f})" in texts
    assert {"Reliability diagram", "accuracy", "count", "perfect calibration"} <= set(texts)


def test_series_overlay_in_their_own_colours_and_labels_are_escaped(tmp_path) -> None:
    series = {"map <&>": make_bins(1), "vl": make_bins(2), "ensemble": make_bins(3)}
    root = ElementTree.parse(write_reliability_svg(tmp_path / "o.svg", series)).getroot()
    for i, bins in enumerate(series.values()):
        accuracy, counts = polylines(root, PALETTE[i])
        assert (len(accuracy), len(counts)) == ((bins.count > 0).sum(), 2 * bins.n_bins)
    texts = [text.text for text in root.iter(f"{SVG}text")]
    assert f"map <&> (ECE {series['map <&>'].ece:.3f})" in texts


def test_an_empty_diagram_has_axes_and_no_points(tmp_path) -> None:
    empty = ReliabilityBins(
        lower=np.linspace(0, 0.9, 10),
        upper=np.linspace(0.1, 1, 10),
        count=np.zeros(10, dtype=int),
        confidence=np.full(10, np.nan),
        accuracy=np.full(10, np.nan),
    )
    root = ElementTree.parse(write_reliability_svg(tmp_path / "e.svg", empty)).getroot()
    (counts,) = polylines(root, PALETTE[0])  # the stairs, flat at zero; no accuracy line
    assert {y for _, y in counts} == {TOP + TOP_H + GAP + COUNT_H}
    assert not list(root.iter(f"{SVG}circle"))


@pytest.mark.parametrize(
    ("most", "axis"), [(0, 1), (1, 1), (3, 5), (10, 10), (11, 20), (399, 500), (500, 500)]
)
def test_the_count_axis_ends_at_a_round_number(most: int, axis: int) -> None:
    assert _nice_ceiling(most) == axis


def test_bad_input_is_refused_with_what_was_wrong(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\.svg.*diagram\.png"):
        write_reliability_svg(tmp_path / "diagram.png", make_bins(0))
    with pytest.raises(ValueError, match="empty"):
        write_reliability_svg(tmp_path / "empty.svg", {})
    with pytest.raises(TypeError, match=r"series\['a'\] must be a ReliabilityBins"):
        write_reliability_svg(tmp_path / "bad.svg", {"a": [0.1, 0.2]})
    assert not list(tmp_path.iterdir())


def test_writing_the_svg_does_not_import_matplotlib(tmp_path) -> None:
    script = (
        "import sys, numpy as np\n"
        "from gradreg.evaluation.metrics import reliability_bins\n"
        "from gradreg.evaluation.svg import write_reliability_svg\n"
        "bins = reliability_bins(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))\n"
        f"write_reliability_svg({str(tmp_path / 'd.svg')!r}, bins)\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "d.svg").is_file()
