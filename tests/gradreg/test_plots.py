import matplotlib
import matplotlib.image
import numpy as np
import pytest

from gradreg.evaluation.metrics import reliability_bins
from gradreg.evaluation.plots import write_cost_figure, write_reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_bins(seed: int, sharpness: float = 1.0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=400) ** sharpness
    probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=400)
    return reliability_bins(probs, labels, n_bins=10)


def assert_is_readable_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 400 <= height <= 800
    assert 400 <= width <= 800


def test_writes_single_series_png_and_creates_parent_dirs(tmp_path) -> None:
    backend_before = matplotlib.get_backend()
    target = tmp_path / "nested" / "dir" / "reliability.png"
    returned = write_reliability_diagram(str(target), make_bins(0), title="one model")
    assert returned == target
    assert_is_readable_png(target)
    assert matplotlib.get_backend() == backend_before


def test_writes_overlay_of_three_series(tmp_path) -> None:
    series = {"map": make_bins(1, 3.0), "vl": make_bins(2), "ensemble": make_bins(3, 0.5)}
    target = write_reliability_diagram(tmp_path / "overlay.png", series)
    assert_is_readable_png(target)


def test_both_layouts_write_the_diagram_and_an_unknown_one_is_refused(tmp_path) -> None:
    for layout in ("fixed", "constrained"):
        assert_is_readable_png(
            write_reliability_diagram(tmp_path / f"{layout}.png", make_bins(0), layout=layout)
        )
    with pytest.raises(ValueError, match=r"layout must be one of fixed, constrained, got 'tight'"):
        write_reliability_diagram(tmp_path / "tight.png", make_bins(0), layout="tight")
    assert not (tmp_path / "tight.png").exists()


def test_rejects_non_png_suffix(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\.png.*diagram\.pdf"):
        write_reliability_diagram(tmp_path / "diagram.pdf", make_bins(0))
    assert not (tmp_path / "diagram.pdf").exists()


def test_rejects_empty_mapping(tmp_path) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_reliability_diagram(tmp_path / "empty.png", {})


def test_rejects_wrong_series_type(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"series\['a'\] must be a ReliabilityBins"):
        write_reliability_diagram(tmp_path / "bad.png", {"a": [0.1, 0.2]})


def test_metrics_module_offers_the_diagram_writer(tmp_path):
    import numpy as np

    from gradreg.evaluation import metrics

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    bins = metrics.reliability_bins(probs, np.array([0, 1, 1]))
    path = metrics.write_reliability_diagram(tmp_path / "d.png", bins, title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_cost_figure_has_a_panel_per_setting_and_refuses_what_a_log_axis_cannot_show(
    tmp_path,
) -> None:
    panels = {
        "digits": {"map": (1.0, 0.10, 0.01), "ivon": (1.2, 0.09, float("nan"))},
        "wine": {"map": (0.2, 0.01, 0.002), "vl-uniform": (0.5, 0.012, 0.003)},
        "mnist1d": {"map": (3.0, 1.05, 0.01)},
        "cnn": {"map": (30.0, 0.2, 0.02)},
    }
    path = write_cost_figure(tmp_path / "out" / "cost.png", panels, xlabel="s", ylabel="NLL")
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (height, width) == (780, 1260)  # 3 panels a row, 2 rows
    with pytest.raises(ValueError, match=r"panel 'wine': x must be positive .* \['map'\]"):
        write_cost_figure(tmp_path / "x.png", {"wine": {"map": (0.0, 1, 0)}}, xlabel="", ylabel="")
    with pytest.raises(ValueError, match="panels must be non-empty"):
        write_cost_figure(tmp_path / "x.png", {"wine": {}}, xlabel="", ylabel="")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        write_cost_figure(tmp_path / "x.svg", panels, xlabel="", ylabel="")
