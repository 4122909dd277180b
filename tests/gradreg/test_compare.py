"""gradreg compare, end to end on a small problem."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from gradreg.cli.main import main
from gradreg.comparison.joined import (
    StoredComparison,
    cost_rows,
    lookup,
    paired,
    reproduction,
    time_methods,
    timing_spec,
)
from gradreg.comparison.report import format_summary, paired_rows, summary_rows, write_comparison
from gradreg.comparison.runs import (
    CompareSpec,
    _grid,
    _mean_predictions,
    _random_points,
    default_methods,
    run_comparison,
)
from gradreg.evaluation.metrics import classification_metrics
from gradreg.methods import METHODS
from gradreg.train import fit

SMALL = dict(
    dataset="iris", model_options={"hidden": [8]}, seeds=2, epochs=2, device="cpu", n_samples=4
)


def test_compare_command_writes_table_csv_json_and_diagrams(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            *("--dataset", "iris", "--hidden", "8", "--seeds", "2", "--epochs", "2"),
            *("--n-samples", "4", "--device", "cpu", "--quiet", "--out", str(out)),
            *("--set", "vl-uniform.noise_scale=0.02"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for method in default_methods():
        own = METHODS[method].predictive
        assert f"{method:<22} {own:<11}" in printed
        # "*": T not fitted on some seed (2 epochs on iris: often worse than uniform on val)
        assert any(f"{method + ts:<22} {own:<11}" in printed for ts in (" +TS", " +TS*"))
    assert "vl-diagonal − laplace (both +TS)" in printed
    assert {p.name for p in out.iterdir()} == {
        "runs.csv",
        "summary.csv",
        "paired.csv",
        "comparison.json",
        "reliability_raw.png",
        "reliability_ts.png",
    }
    with (out / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == len(default_methods()) * 2  # methods × seeds
    assert {r["noise_scale"] for r in runs if r["method"] == "vl-uniform"} == {"0.02"}
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["selection"] == "given"
    # 2 VL methods × every other row × 3 pairings (raw/raw, ts/ts, raw/ts) × 5 metrics
    assert "ivon" in default_methods()
    assert len(summary["paired"]) == 2 * (len(default_methods()) - 1) * 3 * 5
    for png in ("reliability_raw.png", "reliability_ts.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_each_method_is_judged_by_its_own_predictive_with_the_mean_kept_aside():
    comparison = run_comparison(CompareSpec(**SMALL, methods=["map", "laplace", "vl-uniform"]))
    by_key = {(r["label"], r["seed"]): r for r in comparison.runs}
    for seed in range(2):
        map_run, laplace_run = by_key[("map", seed)], by_key[("laplace", seed)]
        assert (map_run["predictive"], laplace_run["predictive"]) == ("mean", "glm_probit")
        assert by_key[("vl-uniform", seed)]["predictive"] == "sample"
        # Laplace trains exactly as MAP: at the mean they are the same network.
        assert laplace_run["test_nll_at_mean"] == map_run["test_nll"]
        assert laplace_run["posterior_prior_precision"] > 0
    row = next(
        r
        for r in paired_rows(comparison)
        if r["baseline"] == "map"
        and r["metric"] == "nll"
        and r["vl_variant"] == "raw"
        and r["baseline_variant"] == "raw"
    )
    diffs = [by_key[("vl-uniform", s)]["test_nll"] - by_key[("map", s)]["test_nll"] for s in (0, 1)]
    assert row["diff_mean"] == pytest.approx(sum(diffs) / 2)
    scaled = next(
        r for r in summary_rows(comparison) if (r["label"], r["variant"]) == ("map", "ts")
    )
    assert scaled["nll_mean"] == pytest.approx(
        sum(by_key[("map", s)]["test_nll_ts"] for s in (0, 1)) / 2
    )
    assert all(r["ms_per_step"] > 0 and r["seconds_per_epoch"] > 0 for r in comparison.runs)


def test_grid_search_chooses_on_validation_from_the_grid():
    ticks = []
    comparison = run_comparison(
        CompareSpec(**{**SMALL, "seeds": 1}, methods=["vl-uniform", "map"], search=True),
        tick=ticks.append,
    )
    sizes = {m: len(_grid(m, 1e-3)) for m in ("vl-uniform", "map")}
    assert len(comparison.search_runs) == sum(sizes.values())
    best = min(
        (r for r in comparison.search_runs if r["method"] == "vl-uniform"),
        key=lambda r: r["val_nll"],
    )
    assert comparison.chosen["vl-uniform"] == {k: best[k] for k in METHODS["vl-uniform"].grid}
    assert len(ticks) == sum(sizes.values()) + 2


def test_a_random_search_gives_every_method_the_same_budget_and_early_stopping_picks_epochs():
    spec = CompareSpec(
        **{**SMALL, "seeds": 1, "epochs": 4},
        methods=["map", "vl-diagonal"],
        search_budget=3,
        early_stopping=True,
    )
    comparison = run_comparison(spec)
    counts = {m: sum(r["method"] == m for r in comparison.search_runs) for m in spec.methods}
    assert counts == {"map": 3, "vl-diagonal": 3}
    lr = spec.lr_of("vl-diagonal")
    assert lr == 1e-3  # the comparison gives none: the method's own
    points = _random_points("vl-diagonal", lr, 3)
    assert points == _random_points("vl-diagonal", lr, 3)  # reproducible
    for point in points:
        assert 0.01 <= point["prior_variance"] <= 100
        assert 1.0 * lr <= point["variance_lr"] <= 30.0 * lr
    # The chosen epochs are the best epoch of the chosen point's search run, by val NLL.
    chosen = comparison.chosen["map"]
    history = fit(spec.config("map", seed=0, **{**chosen, "epochs": 4})).history
    best_epoch = min(range(4), key=lambda i: history[i]["val_nll"]) + 1
    assert chosen["epochs"] == best_epoch
    assert comparison.runs[0]["epochs"] == best_epoch


def test_ensemble_rows_average_the_members_predictive_distributions():
    spec = CompareSpec(**{**SMALL, "seeds": 1}, methods=["map"], ensemble=3)
    comparison = run_comparison(spec)
    assert comparison.labels == ["map", "map ×3"]
    row = next(r for r in comparison.runs if r["label"] == "map ×3")
    members = [fit(spec.config("map", 0).replace(seed=k * 1000)).predictions for k in range(3)]
    average = _mean_predictions(members)["test"]
    expected = classification_metrics(average.probs, average.labels, "test_")
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12)
    assert torch.allclose(
        average.probs.sum(1), torch.ones(len(average.labels), dtype=torch.float64)
    )


def test_a_seed_whose_temperature_was_not_fitted_is_marked_in_the_tables(tmp_path):
    """Wine's 27 validation rows are all classified right by MAP on seed 0 (split 0): its +TS
    numbers are the raw ones, and every table says so rather than pass them off as scaled."""
    spec = CompareSpec(
        dataset="wine",
        model_options={"hidden": [16]},
        methods=["map"],
        seeds=1,
        epochs=10,
        lr=0.01,
        batch_size=32,
        device="cpu",
        ensemble=2,
    )
    comparison = run_comparison(spec)
    reason = (
        "not fitted: all 27 validation examples are classified correctly with a margin, so the "
        "NLL falls as T -> 0 and has no finite minimiser"
    )
    for run in comparison.runs:  # the method and its deep ensemble
        assert run["val_accuracy"] == 1.0
        assert (run["val_temperature"], run["val_temperature_fitted"]) == (1.0, 0.0)
        assert run["temperature_scaling"] == reason
        assert run["test_nll_ts"] == pytest.approx(run["test_nll"])
    scaled = {r["label"]: r for r in summary_rows(comparison) if r["variant"] == "ts"}
    assert {label: r["ts_not_fitted"] for label, r in scaled.items()} == {"map": 1, "map ×2": 1}
    printed = format_summary(comparison)
    assert f"{'map +TS*':<22} mean" in printed and f"{'map ×2 +TS*':<22} ensemble" in printed
    assert (
        "* map +TS: T not fitted on 1 of 1 seeds (seed 0), whose +TS numbers are the raw ones "
        "(T = 1); seed 0: all 27 validation examples are classified correctly" in printed
    )
    write_comparison(comparison, tmp_path)
    document = json.loads((tmp_path / "comparison.json").read_text())
    assert {r["label"]: r["temperature_scaling"] for r in document["runs"]} == {
        "map": reason,
        "map ×2": reason,
    }
    with (tmp_path / "runs.csv").open() as handle:
        assert {r["val_temperature_fitted"] for r in csv.DictReader(handle)} == {"0.0"}


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
    with pytest.raises(ValueError, match="early_stopping picks the epochs in the search"):
        CompareSpec(methods=["map"], early_stopping=True)
    with pytest.raises(ValueError, match=r"give search .* or search_budget, not both"):
        CompareSpec(methods=["map"], search=True, search_budget=2)
    with pytest.raises(ValueError, match="an ensemble needs at least 2 members"):
        CompareSpec(methods=["map"], ensemble=1)
    assert main(["compare", "--set", "noise_scale=0.1", "--quiet"]) == 2


def test_variance_learning_rates_in_the_grid_follow_the_learning_rate():
    assert {p["variance_lr"] for p in _grid("vl-diagonal", 0.01)} == {0.01, 0.1}
    assert {p["prior_variance"] for p in _grid("vl-diagonal", 0.01)} == {0.1, 1.0}


# ---------------------------------------------------------------- a comparison in parts


def _part(folder, methods, runs, chosen=None, **spec):
    return StoredComparison(
        folder,
        {"dataset": "iris", "seeds": 2, "lr": None, "methods": methods, **spec},
        chosen if chosen is not None else {m: {"prior_variance": 1.0} for m in methods},
        runs,
    )


def _row(label, seed, nll, accuracy=0.9, epochs=5):
    return {
        "label": label,
        "seed": seed,
        "test_nll": nll,
        "test_nll_ts": nll - 0.01,
        "test_accuracy": accuracy,
        "test_accuracy_ts": accuracy,
        "test_ece": 0.1,
        "epochs": epochs,
    }


def test_a_rerun_is_checked_number_by_number_against_the_stored_rows(tmp_path):
    stored = _part(tmp_path / "a", ["map", "vl-uniform"], [
        _row("map", 0, 0.5), _row("map", 1, 0.4), _row("vl-uniform", 0, 0.3),
        _row("vl-uniform", 1, 0.3),
    ])  # fmt: skip
    same = _part(tmp_path / "b", ["map", "ivon"], [
        _row("map", 0, 0.5), _row("map", 1, 0.4), _row("ivon", 0, 0.2), _row("ivon", 1, 0.2),
    ])  # fmt: skip
    [agreement] = reproduction(stored, same)  # only the labels both hold
    assert agreement.exact and agreement.values == 2 * 6  # 5 metrics and the epochs, per seed
    assert "all 12 numbers of 2 seeds equal, same choice" in agreement.describe()

    off = _part(tmp_path / "c", ["map"], [_row("map", 0, 0.5), _row("map", 1, 0.4 + 1e-7)])
    [agreement] = reproduction(stored, off)
    assert not agreement.exact and agreement.differing == 2  # test_nll and test_nll_ts
    assert agreement.max_abs_diff == pytest.approx(1e-7)
    assert agreement.worst.startswith("seed 1 test_nll") and agreement.scaled_differing == 1
    assert "2 of 12 numbers of 2 seeds differ (1 of them raw numbers), at most 1e-07" in (
        agreement.describe()
    )
    only_ts = [_row("map", 0, 0.5), {**_row("map", 1, 0.4), "test_nll_ts": 0.0}]
    [agreement] = reproduction(stored, _part(tmp_path / "h", ["map"], only_ts))
    assert "(all of them temperature-scaled numbers or T, every raw number equal)" in (
        agreement.describe()
    )

    chose = _part(tmp_path / "d", ["map"], same.runs[:2], chosen={"map": {"prior_variance": 2}})
    [agreement] = reproduction(stored, chose)
    assert agreement.differing == 0 and not agreement.exact
    assert agreement.describe().endswith("a different choice")

    other = _part(tmp_path / "e", ["map"], same.runs[:2], dataset="wine")
    with pytest.raises(ValueError, match="not the same setting \\(dataset: 'iris' against 'wine'"):
        reproduction(stored, other)
    # A part written before methods had their own lr (it gave the shared 1e-3) is the same
    # setting for MAP, whose own lr is 1e-3; another lr is not.
    assert reproduction(_part(tmp_path / "f", ["map"], same.runs[:2], lr=1e-3), same)
    with pytest.raises(ValueError, match=re.escape("map's lr: 0.01 against 0.001")):
        reproduction(_part(tmp_path / "g", ["map"], same.runs[:2], lr=1e-2), same)


def test_rows_of_two_parts_pair_by_seed_and_count_the_seeds_the_first_wins(tmp_path):
    stored = _part(tmp_path / "a", ["vl-uniform"], [
        _row("vl-uniform", 0, 0.30, 0.90), _row("vl-uniform", 1, 0.20, 0.80),
    ])  # fmt: skip
    new = _part(tmp_path / "b", ["ivon"], [
        _row("ivon", 0, 0.25, 0.95), _row("ivon", 1, 0.30, 0.70),
    ])  # fmt: skip
    runs = lookup([stored, new])
    nll, accuracy = paired(runs, ("vl-uniform", "raw"), ("ivon", "ts"), 2, ("nll", "accuracy"))
    # nll: 0.30 − 0.24 and 0.20 − 0.29; lower wins, so VL won seed 1
    assert nll["diff_mean"] == pytest.approx((0.06 - 0.09) / 2)
    assert nll["diff_se"] == pytest.approx(0.075)  # stdev of (0.06, −0.09) / √2
    assert (nll["first_better"], nll["seeds"]) == (1, 2)
    assert (nll["first_variant"], nll["second_variant"]) == ("raw", "ts")
    # accuracy: −0.05 and +0.10; higher wins
    assert accuracy["diff_mean"] == pytest.approx(0.025) and accuracy["first_better"] == 1
    with pytest.raises(KeyError, match="no run of 'mcvi' for seed\\(s\\) \\[0, 1\\]"):
        paired(runs, ("mcvi", "raw"), ("ivon", "raw"), 2)
    with pytest.raises(ValueError, match="variant of 'ivon' must be raw or ts, got 'scaled'"):
        paired(runs, ("vl-uniform", "raw"), ("ivon", "scaled"), 2)


def test_cost_is_set_against_maps_per_epoch_and_to_the_chosen_epoch():
    runs = {
        ("map", 0): {"epochs": 40},
        ("map", 1): {"epochs": 40},
        ("ivon", 0): {"epochs": 20},
        ("ivon", 1): {"epochs": 20},
    }
    timings = [
        {"method": "map", "seconds_per_epoch": 0.5},
        {"method": "ivon", "seconds_per_epoch": 0.6},
    ]
    rows = {r["method"]: r for r in cost_rows(timings, runs)}
    assert rows["map"]["per_epoch_vs_map"] == 1 and rows["map"]["train_seconds"] == 20
    assert rows["ivon"]["per_epoch_vs_map"] == pytest.approx(1.2)
    assert rows["ivon"]["train_seconds"] == pytest.approx(12)
    assert rows["ivon"]["train_vs_map"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no map row"):
        cost_rows(timings[1:], runs)
    with pytest.raises(ValueError, match="ivon: expected one epoch count over seeds"):
        cost_rows(timings, {**runs, ("ivon", 1): {"epochs": 21}})


def test_a_timing_pass_trains_each_chosen_configuration_with_one_thread(monkeypatch):
    import gradreg.train

    seen = []
    real_fit = gradreg.train.fit

    def fit(config):
        seen.append((config.method, config.epochs, config.lr, torch.get_num_threads()))
        return real_fit(config)

    monkeypatch.setattr(gradreg.train, "fit", fit)
    threads = torch.get_num_threads()
    spec = CompareSpec(**{**SMALL, "methods": ["map", "ivon"]})
    rows = time_methods(spec, {"map": {"epochs": 9}, "ivon": {"lr": 0.2}}, epochs=3)
    assert seen == [("map", 3, 1e-3, 1), ("ivon", 3, 0.2, 1)]
    assert torch.get_num_threads() == threads  # put back
    assert [r["method"] for r in rows] == ["map", "ivon"]
    assert all(r["seconds_per_epoch"] > 0 and r["epochs_timed"] == 2 for r in rows)
    with pytest.raises(ValueError, match="no chosen configuration for method\\(s\\) ivon"):
        time_methods(spec, {"map": {}}, epochs=3)
    with pytest.raises(ValueError, match="epochs must be >= 2"):
        time_methods(spec, {"map": {}, "ivon": {}}, epochs=1)


def test_a_timing_spec_takes_each_method_from_the_first_part_holding_it(tmp_path):
    stored = _part(
        tmp_path / "a", ["map", "vl-uniform"], [], chosen={"map": {"a": 1}, "vl-uniform": {}},
        lr=1e-3, model="mlp", model_options={"hidden": [8]}, search_budget=8,
        early_stopping=True, ensemble=5, hyper_ensemble=5, ensemble_of=["map"],
    )  # fmt: skip
    new = _part(
        tmp_path / "b", ["map", "ivon"], [], chosen={"map": {"a": 2}, "ivon": {"lr": 0.3}},
        model="mlp", model_options={"hidden": [8]}, search_budget=8, early_stopping=True,
        ensemble=5, hyper_ensemble=5, ensemble_of=["map"],
    )  # fmt: skip
    spec, chosen = timing_spec([stored, new])
    assert spec.methods == ["map", "vl-uniform", "ivon"]
    assert chosen == {"map": {"a": 1}, "vl-uniform": {}, "ivon": {"lr": 0.3}}
    # each method at the lr it ran with: the stored part's shared one, IVON its own
    assert spec.config("vl-uniform", 0).lr == 1e-3 and spec.config("ivon", 0).lr == 0.1
    assert not spec.searching and spec.ensemble == 0
