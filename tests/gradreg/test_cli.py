"""python -m gradreg: train table, --json, --out files, data listing, --version, exit codes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import gradreg.version
from gradreg.__main__ import run
from gradreg.cli.main import main
from gradreg.cli.options import parse_option_value
from gradreg.evaluation.metrics import ReliabilityBins

FAST = ["--dataset", "iris", "--hidden", "8", "--epochs", "2", "--device", "cpu", "--quiet"]


def test_train_prints_a_table_of_val_and_test_metrics(capsys):
    assert main(["train", *FAST, "--variance", "uniform", "--noise-scale", "0.01"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (
        lines[0]
        == "vl (uniform variance, sampled Fisher) on iris with mlp, 2 epochs, sample predictive"
    )
    assert lines[1].split() == ["split", "accuracy", "nll", "ece", "aece", "brier"]
    assert lines[3].startswith("val") and lines[4].startswith("test")
    assert all(0.0 <= float(v) <= 10 for v in lines[4].split()[1:])


def test_json_output_and_out_directory(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code = main(
        [
            "train",
            *FAST,
            "--fisher",
            "per_example",
            "--json",
            "--out",
            str(out_dir),
            "--model-option",
            "activation=tanh",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["model_options"] == {"activation": "tanh", "hidden": [8]}
    assert summary["config"]["fisher"] == "per_example"
    assert summary["epochs_run"] == 2
    assert set(summary["posterior"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    names = {p.name for p in out_dir.iterdir()}
    assert names == {
        "metrics.json",
        "history.json",
        "reliability_bins.json",
        "config.json",
        "reliability.png",
    }
    assert (out_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bins = ReliabilityBins.from_dict(json.loads((out_dir / "reliability_bins.json").read_text()))
    assert bins.ece == pytest.approx(summary["metrics"]["test_ece"])
    history = json.loads((out_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_bad_settings_exit_2_with_the_reason(capsys):
    assert main(["train", *FAST, "--variance", "uniform"]) == 2
    assert "needs noise_scale" in capsys.readouterr().err
    assert main(["train", *FAST, "--model-option", "width"]) == 2
    assert "--model-option takes KEY=VALUE, got 'width'" in capsys.readouterr().err
    assert main(["train", *FAST, "--model-option", "depth=3"]) == 2
    assert "depth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "imagenet"])
    assert exit_info.value.code == 2
    assert "unknown dataset 'imagenet'; accepted: blobs" in capsys.readouterr().err


def test_data_list_and_show(capsys):
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("digits", "iris", "wine", "breast_cancer", "mnist1d", "moons", "blobs"):
        assert name in listing
    assert main(["data", "show", "wine"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["n_classes"] == 3 and shown["input_shape"] == [13]
    assert shown["n_train"] + shown["n_val"] + shown["n_test"] == 178


def test_option_values_are_parsed():
    assert parse_option_value("3") == 3
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("True") is True
    assert parse_option_value("16,32") == [16, 32]
    assert parse_option_value("relu") == "relu"


def test_module_entry_point_runs_as_a_program():
    done = subprocess.run(
        [sys.executable, "-m", "gradreg", "train", *FAST, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["epoch"] == 2


def test_file_dataset_commands_say_what_to_place_where(tmp_path, capsys):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mirror = f"https://127.0.0.1:{port}/"
    code = main(["data", "download", "mnist", "--dir", str(tmp_path), "--mirror", mirror])
    assert code == 1
    err = capsys.readouterr().err
    assert f"could not download {mirror}" in err
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in err
    code = main(
        ["train", *FAST[2:], "--dataset", "mnist", "--dataset-option", f"data_dir={tmp_path}"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "mnist files are missing" in err and "data download mnist" in err


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"gradreg {version('gradreg')}\n"


def test_version_of_a_checkout_that_is_not_installed_says_so(monkeypatch, capsys):
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(gradreg.version, "version", not_installed)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "gradreg unknown (not installed)\n"


def test_the_package_version_is_the_installed_distributions(monkeypatch):
    """pyproject.toml is the version's one home: gradreg.__version__ reads what was installed."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)
    assert declared and gradreg.__version__ == version("gradreg") == declared.group(1)
    monkeypatch.setattr(gradreg.version, "version", lambda name: "9.9.9")
    assert gradreg.__version__ == "9.9.9"


def _raising(error: BaseException):
    def fit(*args, **kwargs):
        raise error

    return fit


def test_a_diverging_run_exits_1(monkeypatch, capsys):
    diverged = FloatingPointError("training diverged in epoch 1, step 3: train_loss=nan")
    monkeypatch.setattr("gradreg.train.fit", _raising(diverged))
    assert main(["train", *FAST]) == 1
    assert "gradreg: training diverged" in capsys.readouterr().err


def test_bad_compare_settings_exit_2(capsys):
    assert main(["compare", "--set", "noise_scale", "--quiet"]) == 2
    assert "--set takes METHOD.KEY=VALUE" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch, capsys):
    monkeypatch.setattr("gradreg.train.fit", _raising(KeyboardInterrupt()))
    assert run(["train", *FAST]) == 130
    err = capsys.readouterr().err
    assert "gradreg: interrupted" in err and "Traceback" not in err
