"""The benchmark scripts run end to end (tiny sizes, CPU): a GPU session finds them working."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")


def _run_apart(script: str, args: list[str], tmp_path: Path) -> tuple[str, dict]:
    """Run ``script`` in its own process (one that starts Ray, say); its stdout and figures."""
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_gpu_step_cost_smoke_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    _run(
        "gpu_step_cost.py",
        [
            "--device",
            "cpu",
            "--model",
            "resnet20",
            "--width",
            "2",
            "--batch-sizes",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        monkeypatch,
    )
    rows = json.loads(out.read_text())
    assert {(r["method"], r["fisher"], r["grad"]) for r in rows} >= {
        ("map", "-", "-"),
        ("mcvi", "K=1", "-"),
        ("vl-uniform", "sampled", "autograd"),
        ("vl-uniform", "sampled", "finite_difference"),
    }
    assert {r["bf16"] for r in rows} == {False, True}
    refused = [r for r in rows if r["fisher"] == "per_example"]
    assert refused and all(r["ms_per_step"] is None for r in refused)
    timed = [r for r in rows if r["fisher"] != "per_example"]
    assert all(r["ms_per_step"] > 0 and r["ratio_to_map"] > 0 for r in timed)
    assert "refused" in capsys.readouterr().out


@pytest.mark.slow
def test_step_cost_smoke_run(monkeypatch, capsys):
    _run("step_cost.py", ["--steps", "1", "--repeats", "1", "--batch-size", "16"], monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith(("mlp", "cnn"))]) == 2 * 9


@pytest.mark.slow
def test_sweep_overhead_smoke_run(tmp_path):
    # Its own process: the script starts and stops a Ray instance of its own.
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sweep_overhead.py"), "--epochs", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per-trial overhead, marginal (1 concurrent):" in done.stdout
    assert "2 concurrent vs 1 concurrent, trials' span:" in done.stdout
    assert "2 plain processes vs serial (this machine's ceiling):" in done.stdout


@pytest.mark.slow
def test_sweep_scale_smoke_run(tmp_path):
    # Its own process: the script starts a Ray instance and a driver process per size.
    arguments = [
        # 1001: above the trials a gp spec may have; GP itself is timed at its own sizes only.
        *("--search-trials", "12", "1001", "--gp-trials", "12", "16"),
        *("--suggestions", "2", "--warmup-suggestions", "2", "--save-repeats", "1"),
        *("--tune-trials", "8", "16", "--tune-repeats", "1", "--tune-epochs", "4"),
        *("--tune-checkpoint-every", "2", "--summary-trials", "5", "10"),
        *("--summary-repeats", "1", "--driver-trials", "4", "--driver-epochs", "2"),
        *("--store-sizes", "5", "20", "--store-reports", "10", "--store-requests", "3"),
    ]
    stdout, figures = _run_apart("sweep_scale.py", arguments, tmp_path)
    assert set(figures["parts"]) == {"search", "tune_state", "parent_summary", "driver", "store"}
    search = figures["search"]
    assert set(search) == {"tpe", "gp", "cmaes", "nsga2"}
    for sampler, found in search.items():
        rows = found["sizes"]
        assert all(row["save_median_s"] > 0 and row["save_bytes"] > 0 for row in rows.values())
        if sampler != "gp":
            assert set(rows) == {"12", "1001"}
            assert all(row["run"] and row["ask_tell_median_s"] > 0 for row in rows.values())
            assert rows["12"]["ask_tell_ratio"] == 1.0
    gp = search["gp"]["sizes"]
    assert gp["12"]["run"] and gp["16"]["run"] and not gp["1001"]["run"]
    assert gp["1001"]["extrapolated_s"] > 0 and search["gp"]["fitted_exponent"] is not None
    assert "not run (GP cost grows as n^3; extrapolated" in stdout
    for row in figures["tune_state"].values():
        assert row["save_s"] > 0 and row["upload_s"] > 0 and row["state_file_bytes"] > 0
        assert set(row["parts_s"]) == {"trials_json", "state_file", "searcher", "callbacks"}
        assert 0 < row["driver_share_at_1s"] < 1 and 0 < row["driver_share_adaptive"] < 0.05
    assert set(figures["tune_state"]) == {"8", "16"}
    assert figures["parent_summary"]["5"]["ratio"] == 1.0
    assert all(row["finish_s"] > 0 for row in figures["parent_summary"].values())
    driver = figures["driver"]["4"]
    assert driver["counts"] == {"succeeded": 4}
    assert driver["per_trial_s"] > 0 and driver["peak_rss_bytes"] > 0
    assert driver["callback_events"]["count"] == 4 * (1 + 2 + 1)  # start, 2 results, end
    assert driver["callback_events"]["p99_s"] > 0 and driver["calls"]["tune.save_to_dir"]["count"]
    store = figures["store"]
    assert set(store) == {f"{db}/{n}" for db in ("sqlite", "postgresql") for n in (5, 20)}
    for name, row in store.items():
        for figure in ("report", "legacy_report", "trials_page_50", "best", "events_poll"):
            assert 0 < row[figure]["p50_ms"] <= row[figure]["p99_ms"], (name, figure)
        if name.endswith("/5"):
            assert row["ratios_p50"]["report"] == 1.0


@pytest.mark.slow
def test_tune_state_s3_smoke_run(tmp_path):
    # Its own process: the script starts moto's S3 server and a Ray instance.
    stdout, figures = _run_apart("tune_state_s3.py", ["--epochs", "4", "--trials", "2"], tmp_path)
    for label in ("earlier", "now"):
        row = figures[label]
        assert row["saves"] >= 2 and row["state_bytes"] > 0 and row["result_bytes"] > 0
        assert row["trial_events"] == 2 * 2  # each trial's start and end, seen in the bucket
        assert 0 <= row["lag_p50_s"] <= row["lag_max_s"] < 60
    # The earlier driver appended every report; now each trial's file holds its latest one.
    assert figures["ratio"]["result_bytes"] < 0.5
    assert "now/earlier" in stdout


def test_method_comparison_smoke_run(tmp_path, monkeypatch, capsys):
    _run(
        "method_comparison.py",
        ["--settings", "smoke", "--out", str(tmp_path)],
        monkeypatch,
    )
    printed = capsys.readouterr().out
    assert "== smoke: iris" in printed
    for label in ("map ×2", "map top-2", "laplace +TS", "vl-uniform − map ×2"):
        assert label in printed
    files = {p.name for p in (tmp_path / "smoke").iterdir()}
    assert {"summary.csv", "paired.csv", "search.csv", "reliability_ts.png"} <= files
    _run(
        "method_comparison.py",
        ["--settings", "smoke", "--out", str(tmp_path), "--markdown"],
        monkeypatch,
    )
    tables = capsys.readouterr().out
    assert "| map ×2 +TS | ensemble |" in tables and "| vl-uniform − map +TS |" in tables


def test_stop_latency_smoke_run(monkeypatch, capsys):
    _run("stop_latency.py", ["--repeats", "1"], monkeypatch)
    printed = capsys.readouterr().out
    assert "raised → seen by the driver (s)" in printed
    assert "raised → run_sweep returned (s)" in printed


def test_laplace_recipes_smoke_run(monkeypatch, capsys):
    _run("laplace_recipes.py", ["--datasets", "iris", "--seeds", "2", "--epochs", "2"], monkeypatch)
    printed = capsys.readouterr().out
    assert "== iris: 2 seeds" in printed and "**(best val)**" in printed
    for recipe in ("val_nll + glm_probit", "fixed + sample", "| map |"):
        assert recipe in printed


def test_finite_difference_accuracy_smoke_run(monkeypatch, capsys):
    _run("finite_difference_accuracy.py", ["--networks", "mlp"], monkeypatch)
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith("mlp")]
    float64 = next(row for row in rows if row[1] == "float64")
    assert float(float64[-1]) < 1e-6  # the float64 finite difference matches autograd
    assert len(rows) == 5 + 8


def test_gpu_packing_smoke_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    arguments = ["--device", "cpu", "--counts", "1,2", "--train-size", "200", "--epochs", "1"]
    _run("gpu_packing.py", [*arguments, "--width", "2", "--json", str(out)], monkeypatch)
    rows = json.loads(out.read_text())
    assert [r["k"] for r in rows] == [1, 2]
    assert rows[0]["slowdown"] == 1.0 and all(r["trials_per_hour"] > 0 for r in rows)


def test_regulariser_grad_training_smoke_run(monkeypatch, capsys):
    arguments = ["--seeds", "2", "--epochs", "1", "--datasets", "digits"]
    _run("regulariser_grad_training.py", arguments, monkeypatch)
    printed = capsys.readouterr().out
    assert "| digits | vl-uniform | val_nll |" in printed
    assert "| digits | vl-diagonal | s_per_epoch |" in printed


def test_model_logging_smoke_run(monkeypatch, capsys):
    _run("model_logging.py", ["--repeats", "1", "--epochs", "1", "--hidden", "8"], monkeypatch)
    figures = json.loads(capsys.readouterr().out)
    assert figures["log_model_ms"] > 0 and figures["log_outcome_ms"] > 0
    assert figures["log_model_vs_log_outcome"] > 0 and figures["register_ms"] > 0
