"""The benchmark scripts run end to end (tiny sizes, CPU): a GPU session finds them working."""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as run from a shell: its siblings import
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
    assert re.search(
        r"^per-trial overhead, steady \(median trial\): +-?[0-9.]+ s", done.stdout, re.M
    )
    assert "the first trial's extra (a fresh process):" in done.stdout
    assert "2 concurrent vs 1 concurrent, trials' span:" in done.stdout
    assert "2 plain processes vs serial (this machine's ceiling):" in done.stdout


def test_user_code_overhead_smoke_run(tmp_path):
    # Its own process: each sweep starts a Ray of its own, the bundle's with its code.
    script = str(BENCHMARKS / "user_code_overhead.py")
    done = subprocess.run(
        [sys.executable, script, "--epochs", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for mode in ("built-in", "installed", "bundle"):
        assert re.search(rf"^{mode} +start-up [0-9.]+ s, trial [0-9.]+ s$", done.stdout, re.M)
    versus = r"^bundle vs installed: start-up [+-][0-9.]+ s \([0-9.]+x\), trial [0-9.]+x$"
    assert re.search(versus, done.stdout, re.M)


# ---------------------------------------------------------------- sweep_scale_*.py


def _scale_run(
    script: str, args: list[str], tmp_path: Path, monkeypatch=None, capsys=None
) -> tuple[list[str], dict]:
    """A sweep_scale script's printed lines and its figures, checked to be its own part's: in
    this process (given ``monkeypatch`` and ``capsys``), or in its own where it starts Ray."""
    name = f"sweep_scale_{script}.py"
    if monkeypatch is None:
        stdout, document = _run_apart(name, args, tmp_path)
    else:
        monkeypatch.syspath_prepend(str(BENCHMARKS))  # where it finds its shared module
        out = tmp_path / "figures.json"
        _run(name, [*args, "--json", str(out)], monkeypatch)
        stdout, document = capsys.readouterr().out, json.loads(out.read_text())
    assert document["part"] == script
    return stdout.splitlines(), document["figures"]


def _ratios(line: str) -> list[str]:
    """The ratios a table row prints (``1.23x``), in order."""
    return re.findall(r"\b\d+\.\d\dx\b", line)


def _row(lines: list[str], *first: str) -> str:
    """The one printed line whose first words are ``first`` and that shows ratios."""
    found = [line for line in lines if line.split()[: len(first)] == list(first) and _ratios(line)]
    assert len(found) == 1, (first, lines)
    return found[0]


def _shown(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x"


def _finite_positive(row: dict, *keys: str) -> None:
    for key in keys:
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])


@pytest.mark.slow
def test_sweep_scale_search_smoke_run(tmp_path, monkeypatch, capsys):
    # 1001: above the trials a gp spec may have; GP itself is timed at its own sizes only.
    arguments = [
        *("--search-trials", "12", "1001", "--gp-trials", "12", "16", "30"),
        *("--suggestions", "2", "--warmup-suggestions", "2", "--save-repeats", "1"),
    ]
    lines, figures = _scale_run("search", arguments, tmp_path, monkeypatch, capsys)
    assert set(figures) == {"tpe", "gp", "cmaes", "nsga2"}
    for sampler, found in figures.items():
        rows = found["sizes"]
        sizes = {"12", "16", "30", "1001"} if sampler == "gp" else {"12", "1001"}
        assert set(rows) == sizes
        save_base = rows["12"]["save_median_s"]
        ask_base = rows["12"]["ask_tell_median_s"]
        for n, row in rows.items():
            _finite_positive(row, "save_median_s", "save_bytes")
            asked = row["ask_tell_median_s"] if row["run"] else row["extrapolated_s"]
            assert math.isfinite(asked) and asked > 0
            assert row["save_ratio"] == pytest.approx(row["save_median_s"] / save_base)
            assert row["ask_tell_ratio"] == pytest.approx(asked / ask_base)
            assert _ratios(_row(lines, sampler, n)) == [
                _shown(asked, ask_base),
                _shown(row["save_median_s"], save_base),
            ]
        assert rows["1001"]["save_bytes"] > rows["12"]["save_bytes"]  # the study grew
    gp = figures["gp"]
    assert [n for n, row in gp["sizes"].items() if not row["run"]] == ["1001"]
    # GP's extrapolation: the least-squares line through log(time) over log(trials).
    fitted = {int(n): row["ask_tell_median_s"] for n, row in gp["sizes"].items() if row["run"]}
    slope, intercept = np.polyfit(np.log(list(fitted)), np.log(list(fitted.values())), 1)
    assert gp["fitted_exponent"] == pytest.approx(slope)
    assert gp["sizes"]["1001"]["extrapolated_s"] == pytest.approx(
        math.exp(intercept + slope * math.log(1001))
    )
    assert "not run (GP cost grows as n^3; extrapolated" in "\n".join(lines)


@pytest.mark.slow
def test_sweep_scale_tune_state_smoke_run(tmp_path):
    from sweeps.checkpoints import MIN_STATE_SAVE_PERIOD_S, STATE_SAVE_SHARE

    arguments = ["--tune-trials", "8", "16", "--tune-repeats", "1", "--tune-epochs", "4"]
    lines, figures = _scale_run(
        "tune_state", [*arguments, "--tune-checkpoint-every", "2"], tmp_path
    )
    assert set(figures) == {f"{n}/{v}" for n in ("8", "16") for v in ("trimmed", "untrimmed")}
    for key, row in figures.items():
        n, variant = key.split("/")
        base = figures[f"8/{variant}"]
        _finite_positive(row, "save_s", "cold_save_s", "upload_s", "state_file_bytes")
        assert row["state_bytes_per_trial"] == pytest.approx(row["state_file_bytes"] / int(n))
        assert set(row["parts_s"]) == {"trials_json", "state_file", "searcher", "callbacks"}
        _finite_positive(row["parts_s"], *row["parts_s"])  # the parts fit within the save
        save = row["save_s"]
        assert row["driver_share_at_1s"] == pytest.approx(save / (1.0 + save))
        # The period the driver's adaptive_state_saves gives Tune after a save that long.
        assert row["adaptive_period_s"] == pytest.approx(
            max(MIN_STATE_SAVE_PERIOD_S, save / STATE_SAVE_SHARE)
        )
        assert row["driver_share_adaptive"] == pytest.approx(
            save / (row["adaptive_period_s"] + save)
        )
        assert row["save_ratio"] == pytest.approx(save / base["save_s"])
        assert row["upload_ratio"] == pytest.approx(row["upload_s"] / base["upload_s"])
        assert _ratios(_row(lines, n, variant)) == [
            _shown(save, base["save_s"]),
            _shown(row["upload_s"], base["upload_s"]),
        ]
    for variant in ("trimmed", "untrimmed"):
        assert (
            figures[f"16/{variant}"]["state_file_bytes"]
            > figures[f"8/{variant}"]["state_file_bytes"]
        )
    for n in ("8", "16"):
        trimmed, untrimmed = figures[f"{n}/trimmed"], figures[f"{n}/untrimmed"]
        per_trial = trimmed["state_bytes_per_trial"] / untrimmed["state_bytes_per_trial"]
        assert trimmed["vs_untrimmed"]["state_bytes_per_trial"] == pytest.approx(per_trial)
        assert per_trial < 0.5  # the trimmer's whole point, at this size too
        assert _shown(per_trial, 1.0) in _row(lines, n, "trials:")


@pytest.mark.slow
def test_sweep_scale_parent_summary_smoke_run(tmp_path, monkeypatch, capsys):
    arguments = ["--summary-trials", "5", "10", "--summary-repeats", "1"]
    lines, figures = _scale_run("parent_summary", arguments, tmp_path, monkeypatch, capsys)
    assert set(figures) == {"5", "10"}
    for n, row in figures.items():
        _finite_positive(row, "finish_s", "summary_bytes")
        assert row["ratio"] == pytest.approx(row["finish_s"] / figures["5"]["finish_s"])
        assert _ratios(_row(lines, n)) == [_shown(row["finish_s"], figures["5"]["finish_s"])]
    assert figures["10"]["summary_bytes"] > figures["5"]["summary_bytes"]


@pytest.mark.slow
def test_sweep_scale_driver_smoke_run(tmp_path):
    arguments = ["--driver-trials", "1", "2", "--driver-epochs", "2", "--python-heap"]
    lines, figures = _scale_run("driver", arguments, tmp_path)
    assert set(figures) == {f"{n}/{v}" for n in ("1", "2") for v in ("trimmed", "untrimmed")}
    for key, row in figures.items():
        n, variant = key.split("/")
        base = figures[f"1/{variant}"]
        trials = int(n)
        assert row["counts"] == {"succeeded": trials}
        _finite_positive(row, "per_trial_s", "driver_cpu_per_trial_s", "peak_rss_bytes")
        _finite_positive(row, "state_file_bytes")
        assert row["per_trial_s"] == pytest.approx(row["span_s"] / trials)
        assert row["state_bytes_per_trial"] == pytest.approx(row["state_file_bytes"] / trials)
        events = row["callback_events"]
        assert events["count"] == trials * (1 + 2 + 1)  # start, 2 results, end
        for call in (events, *row["calls"].values()):
            if call["count"]:
                assert 0 < call["p50_s"] <= call["p99_s"] <= call["max_s"] <= call["total_s"]
        assert row["calls"]["tune.save_to_dir"]["count"] >= 1
        assert row["calls"]["searcher.suggest"]["count"] == trials
        pairs = [
            (row["per_trial_s"], base["per_trial_s"]),
            (row["driver_cpu_per_trial_s"], base["driver_cpu_per_trial_s"]),
            (events["p99_s"], base["callback_events"]["p99_s"]),
            (row["peak_rss_bytes"], base["peak_rss_bytes"]),
        ]
        assert _ratios(_row(lines, n, variant)) == [_shown(v, b) for v, b in pairs]
        assert row["per_trial_ratio"] == pytest.approx(pairs[0][0] / pairs[0][1])
        assert row["peak_rss_ratio"] == pytest.approx(pairs[3][0] / pairs[3][1])
        expected = (
            (row["peak_rss_bytes"] - base["peak_rss_bytes"]) / (trials - 1) if n != "1" else None
        )
        assert row["rss_bytes_per_trial"] == (expected and pytest.approx(expected))
        # Python's heap between half and all of the trials' ends: none with one trial.
        heap = row["python_heap_bytes_per_trial"]
        assert (heap is None) == (n == "1")
        if heap is not None:
            assert math.isfinite(heap)
            shown = f"  {key}: Python's heap grew {heap / 1e3:.1f} KB per trial over"
            assert any(line.startswith(shown) for line in lines), shown
    for n in ("1", "2"):
        trimmed, untrimmed = figures[f"{n}/trimmed"], figures[f"{n}/untrimmed"]
        per_trial = trimmed["state_bytes_per_trial"] / untrimmed["state_bytes_per_trial"]
        assert trimmed["vs_untrimmed"]["state_bytes_per_trial"] == pytest.approx(per_trial)
        assert per_trial < 1.0
        assert f"state_bytes_per_trial {_shown(per_trial, 1.0)}" in _row(lines, n, "trials:")


@pytest.mark.slow
def test_sweep_scale_store_smoke_run(tmp_path, monkeypatch, capsys):
    arguments = ["--store-sizes", "5", "20", "--store-reports", "10", "--store-requests", "3"]
    lines, figures = _scale_run("store", arguments, tmp_path, monkeypatch, capsys)
    assert set(figures) == {f"{db}/{n}" for db in ("sqlite", "postgresql") for n in (5, 20)}
    for name, row in figures.items():
        backend, size = name.split("/")
        base = figures[f"{backend}/5"]
        for figure, timing in row.items():
            _finite_positive(timing, "p50_ms", "p99_ms")
            assert timing["p50_ms"] <= timing["p99_ms"], (name, figure)
            assert timing["ratio_p50"] == pytest.approx(timing["p50_ms"] / base[figure]["p50_ms"])
        shown = [
            _shown(row[figure]["p50_ms"], base[figure]["p50_ms"])
            for figure in ("report", "legacy_report", "trials_top_50_by_val_nll")
        ]
        assert _ratios(_row(lines, backend, size)) == shown


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
    assert "| ivon | sample |" in tables

    # A subset into a folder of its own, joined to the first: MAP and IVON rerun reproduce the
    # first run's rows, a timing pass costs every method of both, and the tables and the
    # cost figure join them.
    subset = tmp_path / "subset"
    common = ["--settings", "smoke", "--out", str(subset)]
    _run("method_comparison.py", [*common, "--methods", "map,ivon"], monkeypatch)
    assert json.loads((subset / "smoke" / "comparison.json").read_text())["spec"]["methods"] == [
        "map",
        "ivon",
    ]
    _run("method_comparison.py", [*common, "--joined", str(tmp_path), "--cost"], monkeypatch)
    cost = (subset / "smoke" / "cost.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in cost[1:]] == ["map", "vl-uniform", "laplace", "ivon"]
    figure = tmp_path / "cost_vs_nll.png"
    _run(
        "method_comparison.py",
        [*common, "--joined", str(tmp_path), "--markdown", "--figure", str(figure)],
        monkeypatch,
    )
    joined = capsys.readouterr().out
    assert "rerun of map: all " in joined and "NOT reproduced" not in joined
    assert "rerun of ivon: all " in joined and "rerun of map ×2: all " in joined
    for row in ("| vl-uniform − ivon |", "| ivon +TS − map +TS |", "| ivon − map |", "| map | "):
        assert row in joined
    assert "| ivon | " in joined and "× |" in joined  # the cost table, against MAP
    assert figure.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):  # a method the setting does not compare
        _run("method_comparison.py", [*common, "--methods", "map,mcvi"], monkeypatch)
    assert "--methods: mcvi not in the settings' methods" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cost"], "--cost and --figure need --joined STORED"),
        (["--joined", "x"], "--joined goes with --markdown (the joined tables) or --cost"),
        (["--joined", "x", "--cost", "--figure", "f.png"], "--figure goes with --markdown"),
        (["--methods", ","], "--methods: (none given) not in the settings' methods"),
    ],
)
def test_method_comparison_refuses_options_that_do_not_go_together(args, says, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:  # before anything runs
        _run("method_comparison.py", ["--settings", "smoke", *args], monkeypatch)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err


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
    assert len(rows) == 7 + 8


def test_finite_difference_accuracy_under_emulated_tf32_smoke_run(monkeypatch, capsys):
    _run("finite_difference_accuracy.py", ["--networks", "cnn", "--emulate-tf32"], monkeypatch)
    printed = capsys.readouterr().out
    assert "TF32 convolutions True, TF32 emulated True" in printed
    paths_table = printed.split("\n\n")[0]  # before the step lengths' table
    errors = {
        " ".join(line.split()[2:-2]): float(line.split()[-1])
        for line in paths_table.splitlines()
        if line.startswith("cnn       float32    ")
    }
    assert set(errors) == {"autograd", "finite_difference", "fd, flags"}
    # the passes in float32 stay accurate; in TF32 (what the path did before) they do not
    assert errors["finite_difference"] < 5e-3 < 2e-2 < errors["fd, flags"], errors


def test_regulariser_grad_variants_smoke_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    arguments = ["--models", "cnn,resnet20", "--image-size", "8", "--batch-sizes", "8"]
    arguments += ["--steps", "1", "--warmup", "0", "--emulate-tf32", "--json", str(out)]
    _run("regulariser_grad_variants.py", arguments, monkeypatch)
    rows = json.loads(out.read_text())
    variants = runpy.run_path(str(BENCHMARKS / "regulariser_grad_variants.py"))["VARIANTS"]
    assert [r["variant"] for r in rows] == 2 * ["map", *variants]
    by = {(r["model"], r["variant"]): r for r in rows}
    for model in ("cnn", "resnet20"):
        assert by[model, "map"]["gflops_ratio"] == 1.0 and "total_error" not in by[model, "map"]
        for label in variants:
            row = by[model, label]
            assert row["ms_per_step"] > 0 and row["peak_mib"] is None  # no GPU memory on a CPU
            assert math.isfinite(row["total_error"]) and math.isfinite(row["regulariser_error"])
        # what each way costs in convolutions: two passes, three, autograd's double backward
        assert by[model, "forward fp32"]["gflops_ratio"] == pytest.approx(2.0, abs=0.05)
        assert by[model, "central fp32"]["gflops_ratio"] == pytest.approx(3.0, abs=0.05)
        assert by[model, "fwd-over-rev flags"]["gflops_ratio"] > 4.5
        # in float32 proper autograd matches float64; in TF32 the forward difference does not
        assert by[model, "autograd fp32"]["regulariser_error"] < 1e-4
        assert by[model, "forward flags"]["regulariser_error"] > 0.2
    assert "resnet20      8 fwd-over-rev flags" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_session_runs_every_part_at_tiny_sizes(tmp_path):
    """SMOKE=1: every command the GPU session runs, on the CPU, through the script itself."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_session.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=BENCHMARKS.parent,
        env={**os.environ, "SMOKE": "1", "PARTS": "all", "OUT": str(out), "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parts = [
        "variants_resnet20",
        "variants_resnet18",
        "accuracy",
        "train_e2e",
        "step_cost",
        "packing_resnet20",
        "packing_resnet18",
    ]
    exits = re.findall(r"^== (\w+): exit (\d+) after", done.stdout, flags=re.MULTILINE)
    assert exits == [(name, "0") for name in parts], done.stdout[-3000:]
    assert {path.name for path in out.iterdir()} >= {f"{name}.txt" for name in parts}
    for model in ("resnet20", "resnet18"):
        rows = json.loads((out / f"variants_{model}.json").read_text())
        assert {r["model"] for r in rows} == {model} and {r["batch_size"] for r in rows} == {4}
        assert "forward fp32" in {r["variant"] for r in rows}


def test_gpu_packing_smoke_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    arguments = ["--device", "cpu", "--counts", "1,2", "--train-size", "200", "--epochs", "1"]
    _run("gpu_packing.py", [*arguments, "--width", "2", "--json", str(out)], monkeypatch)
    rows = json.loads(out.read_text())
    assert [r["k"] for r in rows] == [1, 2]
    first, second = rows
    assert all(r["train_s_per_trial"] > 0 and r["trials_per_hour"] > 0 for r in rows)
    assert second["slowdown"] == pytest.approx(
        second["train_s_per_trial"] / first["train_s_per_trial"]
    )
    assert second["rate_vs_k1"] == pytest.approx(
        second["trials_per_hour"] / first["trials_per_hour"]
    )
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[:3] for row in printed if row[:1] == ["2"]] == [
        ["2", f"{second['train_s_per_trial']:.1f}", f"{second['slowdown']:.2f}"]
    ]


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
    fixed, constrained = figures["diagram_fixed_ms"], figures["diagram_constrained_ms"]
    assert fixed > 0 and constrained > 0
    assert figures["diagram_fixed_vs_constrained"] == pytest.approx(fixed / constrained, abs=0.02)
    assert figures["diagram_svg_ms"] > 0
    assert figures["diagram_svg_vs_fixed"] == pytest.approx(figures["diagram_svg_ms"] / fixed, 0.1)
    assert figures["log_epochs_batch_ms"] > 0 and figures["epochs_in_batch"] == 1


def test_warm_start_smoke_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "warm.json"
    _run(
        "warm_start.py",
        ["--smoke", "--seeds", "2", "--trials", "3", "--json", str(out)],
        monkeypatch,
    )
    printed = capsys.readouterr().out
    assert "iris: 2 seeds" in printed and "warm 3 vs fresh 6" in printed
    figures = json.loads(out.read_text())["iris"]
    # Every earlier trial lies in the same space at the same settings: all seed the study.
    assert figures["seeded"] == [3, 3]
    assert [len(run["fresh"]) for run in figures["runs"]] == [6, 6]
    # The fresh sweep's first 3 trials are the fresh 3-trial sweep: its best after 3 and the
    # table's agree.
    firsts = [min(t["val_nll"] for t in run["fresh"][:3]) for run in figures["runs"]]
    assert figures["summary"]["val_nll"]["k=3"]["fresh"][0] == pytest.approx(sum(firsts) / 2)
