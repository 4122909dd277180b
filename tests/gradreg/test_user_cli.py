"""A researcher's own code through the command line (``--code DIR``) and in a saved posterior,
which a fresh process reloads with the code on its path, and refuses to without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradreg.cli.main import main
from gradreg.export import MANIFEST_FILE
from gradreg.train import fit
from gradreg.user_code import code_path
from tests.helpers.user_code import BUILD, LOAD, user_config, write_user_code

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [
    "train",
    "--model",
    BUILD,
    "--model-option",
    "width=6",
    "--dataset",
    LOAD,
    "--dataset-option",
    "n=60",
    "--method",
    "vl",
    "--variance",
    "uniform",
    "--noise-scale",
    "0.01",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--quiet",
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a fresh process whose path holds gradreg but not the user's code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A posterior of the user's network, saved, with the code directory and some inputs."""
    root = tmp_path_factory.mktemp("own")
    code = write_user_code(root / "src")
    config = user_config(model_options={"width": 6}, dataset_options={"n": 60}, epochs=1)
    with code_path(code):
        result = fit(config)
        from tdata.waves import signals

        inputs, _ = signals(5, 16, seed=7)
    directory = result.saved().save(root / "model")
    np.save(root / "inputs.npy", inputs)
    probs = result.saved().predict_proba(inputs, mode="mean")
    return root, code, directory, probs


def test_the_manifest_records_the_builders_entry_point_and_options(saved):
    _, _, directory, _ = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["config"]["model"] == BUILD
    assert manifest["config"]["model_options"] == {"width": 6}


def test_a_fresh_process_reloads_it_with_the_code_on_its_path(saved):
    root, code, directory, probs = saved
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); "
        "from gradreg.export import SavedPosterior; "
        "saved = SavedPosterior.load(sys.argv[2]); "
        "np.save(sys.argv[3], saved.predict_proba(np.load(sys.argv[4]), mode='mean'))"
    )
    done = run(
        "-c",
        script,
        str(code),
        str(directory),
        str(root / "p.npy"),
        str(root / "inputs.npy"),
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(root / "p.npy"), probs)


def test_without_the_code_the_reload_names_the_entry_point(saved):
    root, _, directory, _ = saved
    script = (
        "import sys; from gradreg.export import SavedPosterior; SavedPosterior.load(sys.argv[1])"
    )
    done = run("-c", script, str(directory), cwd=root)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "gradreg.user_code.UserCodeError: model builder 'tnets.mixer:build': no module or package "
        "named 'tnets' on this process's import path (sys.path): the code is not on it; give "
        "its directory (--code DIR) or install it"
    )


def test_predict_takes_the_code_directory(saved):
    root, code, directory, probs = saved
    predict = ["-m", "gradreg", "predict", "--model-uri", str(directory)]
    predict += ["--input", str(root / "inputs.npy"), "--mode", "mean"]
    done = run(*predict, "--code", str(code), cwd=root)
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in done.stdout.strip().splitlines()]
    assert rows[0] == ["p_low", "p_mid", "p_high", "predicted", "entropy"]
    np.testing.assert_allclose([[float(v) for v in row[:3]] for row in rows[1:]], probs, rtol=1e-8)
    without = run(*predict, cwd=root)
    assert without.returncode == 2
    assert "gradreg: error: model builder 'tnets.mixer:build': no module or package named " in (
        without.stderr
    )


def test_train_and_data_show_take_the_code_directory(tmp_path, capsys):
    code = write_user_code(tmp_path / "src")
    assert main([*TRAIN, "--code", str(code), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["model"] == BUILD
    assert summary["dataset"]["source"]["entry_point"] == LOAD
    assert "tnets" not in sys.modules and str(code) not in sys.path  # only for the command
    assert main(["data", "show", LOAD, "--code", str(code), "--option", "n=40"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["class_names"] == ["low", "mid", "high"] and shown["input_shape"] == [1, 16]
    assert shown["n_train"] + shown["n_val"] + shown["n_test"] == 40


def test_the_command_line_says_what_is_wrong(tmp_path, capsys):
    code = write_user_code(tmp_path / "src")
    assert main([*TRAIN]) == 2  # no --code: the code is not on the path
    assert (
        "gradreg: error: data loader 'tdata.waves:load': no module or package named 'tdata' "
        in (capsys.readouterr().err)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tnets:mixer:build"])
    assert exit_info.value.code == 2
    assert "argument --model: model: 'tnets:mixer:build' holds 2 colons" in capsys.readouterr().err
    assert main(["data", "show", LOAD, "--code", str(code), "--dir", str(tmp_path)]) == 2
    assert "--dir is for gradreg's datasets; give your loader's options with --option" in (
        capsys.readouterr().err
    )
    assert main([*TRAIN, "--code", str(tmp_path / "absent")]) == 2
    assert "code directory" in capsys.readouterr().err


def test_preflight_tries_the_settings_and_names_what_fails(tmp_path, capsys):
    code = write_user_code(tmp_path / "src")
    check = ["preflight", *TRAIN[1:], "--code", str(code)]
    assert main(check) == 0
    out = capsys.readouterr().out
    assert out.startswith("preflight passed: tnets.mixer:build on tdata.waves:load (vl-uniform")
    assert main([*check, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entry_points"] == [BUILD, LOAD] and report["n_classes"] == 3
    assert report["step_memory_bytes"] > 4 * report["n_parameters"] > 0
    per_example = [a for a in check if a not in ("--variance", "uniform", "--noise-scale", "0.01")]
    assert main([*per_example, "--fisher", "per_example"]) == 2
    assert capsys.readouterr().err == (
        "gradreg: error: preflight failed at stage 'layers': model builder 'tnets.mixer:build': "
        "method 'vl-diagonal' with fisher 'per_example' cannot train this network: layer "
        "'block.norm' (LayerNorm) has parameters but no per-example rule. Set fisher to "
        "'sampled', which works for any architecture\n"
    )
    assert main([*check, "--out", str(tmp_path / "out")]) == 2
    assert "preflight writes no files; drop --out" in capsys.readouterr().err
