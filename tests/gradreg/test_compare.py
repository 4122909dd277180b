"""gradreg compare, end to end on a small problem."""

from __future__ import annotations

import csv
import json

import pytest

from gradreg.cli import main
from gradreg.compare import CompareSpec, default_methods, run_comparison
from gradreg.methods import METHODS

SMALL = dict(
    dataset="iris", model_options={"hidden": [8]}, seeds=2, epochs=2, device="cpu", n_samples=4
)


def test_compare_command_writes_table_csv_json_and_diagrams(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--dataset",
            "iris",
            "--hidden",
            "8",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--n-samples",
            "4",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "vl-uniform.noise_scale=0.02",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for method in default_methods():
        assert f"{method:<12} mean" in printed and f"{method:<12} sample" in printed
    assert "vl-diagonal − laplace" in printed
    assert {p.name for p in out.iterdir()} == {
        "runs.csv",
        "summary.csv",
        "paired.csv",
        "comparison.json",
        "reliability_mean.png",
        "reliability_sample.png",
    }
    with (out / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == len(default_methods()) * 2 * 2  # methods × seeds × predictive modes
    uniform = [r for r in runs if r["method"] == "vl-uniform"]
    assert {r["noise_scale"] for r in uniform} == {"0.02"}
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["selection"] == "given"
    assert len(summary["paired"]) == 2 * 3 * 5  # VL methods × baselines × metrics
    for png in ("reliability_mean.png", "reliability_sample.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_split_and_map_equals_laplace_at_the_mean():
    comparison = run_comparison(CompareSpec(**SMALL, methods=["map", "laplace", "vl-uniform"]))
    by_key = {(r["method"], r["seed"], r["mode"]): r for r in comparison.runs}
    for seed in range(2):
        # Laplace trains exactly as MAP; only its sampled predictive differs.
        map_run, laplace_run = by_key[("map", seed, "mean")], by_key[("laplace", seed, "mean")]
        assert map_run["test_nll"] == laplace_run["test_nll"]
        assert by_key[("laplace", seed, "sample")]["test_nll"] != laplace_run["test_nll"]
    paired = comparison.paired_rows()
    row = next(r for r in paired if r["baseline"] == "map" and r["metric"] == "nll")
    diffs = [
        by_key[("vl-uniform", s, "sample")]["test_nll"] - by_key[("map", s, "sample")]["test_nll"]
        for s in range(2)
    ]
    assert row["diff_mean"] == pytest.approx(sum(diffs) / 2)
    assert all(r["ms_per_step"] > 0 and r["seconds_per_epoch"] > 0 for r in comparison.runs)


def test_search_chooses_on_validation_from_the_grid():
    ticks = []
    comparison = run_comparison(
        CompareSpec(**{**SMALL, "seeds": 1}, methods=["vl-uniform", "map"], search=True),
        tick=ticks.append,
    )
    assert len(comparison.search_runs) == 6 + 2
    best = min(
        (r for r in comparison.search_runs if r["method"] == "vl-uniform"),
        key=lambda r: r["val_nll"],
    )
    assert comparison.chosen["vl-uniform"] == {k: best[k] for k in METHODS["vl-uniform"].grid}
    assert len(ticks) == 8 + 2


def test_bad_comparisons_are_refused_before_anything_runs():
    with pytest.raises(
        ValueError, match=r"unknown or missing method.*vl-full; accepted: vl-uniform"
    ):
        CompareSpec(methods=["vl-full"])
    with pytest.raises(ValueError, match="listed twice"):
        CompareSpec(methods=["map", "map"])
    with pytest.raises(ValueError, match=r"settings given for method.*not compared: mcvi"):
        CompareSpec(methods=["map"], overrides={"mcvi": {"mc_samples": 2}})
    with pytest.raises(ValueError, match="method 'map' does not use noise_scale"):
        CompareSpec(methods=["map"], overrides={"map": {"noise_scale": 0.1}})
    assert main(["compare", "--set", "noise_scale=0.1", "--quiet"]) == 2


def test_variance_learning_rates_in_the_grid_follow_the_learning_rate():
    from gradreg.compare import _grid

    assert {p["variance_lr"] for p in _grid("vl-diagonal", 0.01)} == {0.01, 0.1}
    assert {p["prior_variance"] for p in _grid("vl-diagonal", 0.01)} == {0.1, 1.0}
