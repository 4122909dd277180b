"""A trial's posterior as an MLflow model: logged, registered and served by a real MLflow
tracking server, loaded by `mlflow.pyfunc`, served by `mlflow models serve`, and read by
``gradreg predict``."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from gradreg.cli import main as gradreg_main
from gradreg.train import fit
from service.launcher import free_port
from sweeps.cli import main as sweeps_main
from sweeps.model import log_model, logged_model_uri, register
from tests.service.mlflow_server import MlflowServer

NAME = "iris-vl-uniform"


@pytest.fixture(scope="module")
def saved():
    result = fit(
        {
            "dataset": "iris",
            "model": "mlp",
            "model_options": {"hidden": [16]},
            "method": "vl",
            "variance": "uniform",
            "noise_scale": 0.05,
            "epochs": 2,
            "lr": 0.01,
            "device": "cpu",
        }
    )
    return result.saved()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registered(saved, server):
    """(run id, model URI, registered version) of ``saved`` logged through the server."""
    client = MlflowClient(server.url)
    experiment = client.create_experiment("models")
    run_id = client.create_run(experiment).info.run_id
    model_uri = log_model(server.url, run_id, saved, saved.inputs.example)
    tags = {"gradreg.sweep": "abc123", "metric.val_nll": "0.5"}
    version = register(server.url, NAME, model_uri, run_id, tags, "the best of abc123")
    return run_id, model_uri, version


def test_the_registered_model_predicts_probabilities_from_raw_inputs(saved, server, registered):
    run_id, model_uri, version = registered
    client = MlflowClient(server.url)
    assert logged_model_uri(client, run_id) == model_uri
    found = client.get_model_version(NAME, version)
    assert found.run_id == run_id
    assert found.tags["gradreg.sweep"] == "abc123"
    assert found.description == "the best of abc123"

    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    raw = saved.inputs.example
    out = model.predict(raw)
    assert list(out.columns) == list(saved.class_names)
    assert np.allclose(out.to_numpy(), saved.predict_proba(raw), rtol=0, atol=1e-12)
    sampled = model.predict(raw, params={"mode": "sample", "n_samples": 4, "seed": 1})
    expected = saved.predict_proba(raw, "sample", n_samples=4, seed=1)
    assert np.allclose(sampled.to_numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(sampled.to_numpy(), saved.predict_proba(raw, "mean"))

    inputs = model.metadata.get_input_schema().inputs
    assert inputs[0].shape == (-1, *saved.inputs.transform.raw_shape)
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"mode": saved.predictives[0], "n_samples": 32, "seed": 0}
    # A second registration is the next version of the same model.
    assert register(server.url, NAME, model_uri, run_id, {}, "") == str(int(version) + 1)


def test_bad_inputs_to_the_model_name_the_expected_shape(saved, server, registered):
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model(registered[1])
    with pytest.raises(Exception, match=r"shape"):
        model.predict(np.zeros((2, 7)))


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_probabilities(saved, server, registered, tmp_path):
    port = free_port()
    bin_dir = Path(sys.executable).parent  # MLflow starts `uvicorn` from the PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mlflow_cli = str(bin_dir / "mlflow")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            mlflow_cli, "models", "serve", "-m", f"models:/{NAME}/{registered[2]}",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "mlflow models serve not up in 120 s"
            time.sleep(0.5)
        raw = saved.inputs.example
        answer = httpx.post(
            f"{url}/invocations",
            json={"inputs": raw.tolist(), "params": {"mode": "mean"}},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        served = np.array([[row[name] for name in saved.class_names] for row in rows])
        assert np.allclose(served, saved.predict_proba(raw, "mean"), rtol=0, atol=1e-9)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _predict(argv: list[str], capsys, cli=gradreg_main) -> tuple[int, str, str]:
    code = cli(["predict", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_writes_probabilities_the_class_and_the_entropy(
    saved, server, registered, tmp_path, capsys
):
    raw = saved.inputs.example
    np.save(tmp_path / "x.npy", raw)
    output = tmp_path / "predictions.csv"
    code, _, err = _predict(
        [
            "--model-uri", f"models:/{NAME}/{registered[2]}", "--tracking-uri", server.url,
            "--input", str(tmp_path / "x.npy"), "--output", str(output),
        ],
        capsys,
        cli=sweeps_main,  # an MLflow URI: sweeps reads MLflow, gradreg does not
    )  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    probs = np.array([[float(r[f"p_{name}"]) for name in saved.class_names] for r in rows])
    expected = saved.predict_proba(raw)
    assert np.allclose(probs, expected, rtol=1e-8, atol=0)
    assert [r["predicted"] for r in rows] == [saved.class_names[i] for i in expected.argmax(1)]
    entropy = -(expected * np.log(expected)).sum(axis=1)
    assert np.allclose([float(r["entropy"]) for r in rows], entropy, rtol=1e-8)

    # gradreg sends an MLflow URI to sweeps.
    code, _, err = _predict(
        ["--model-uri", f"models:/{NAME}/1", "--input", str(tmp_path / "x.npy")], capsys
    )
    assert code == 2 and "python -m sweeps predict reads those" in err
    code, _, err = _predict(
        ["--model-uri", "models:/no-such-model/1", "--tracking-uri", server.url,
         "--input", str(tmp_path / "x.npy")],
        capsys,
        cli=sweeps_main,
    )  # fmt: skip
    assert code == 2 and "--model-uri models:/no-such-model/1:" in err

    # A local directory (the saved posterior itself) needs no MLflow, and prints to stdout.
    directory = saved.save(tmp_path / "posterior")
    code, out, err = _predict(
        ["--model-uri", str(directory), "--input", str(tmp_path / "x.npy"), "--mode", "mean"],
        capsys,
    )
    assert code == 0, err
    assert out.splitlines()[0] == ",".join(
        [*(f"p_{n}" for n in saved.class_names), "predicted", "entropy"]
    )
    assert len(out.splitlines()) == 1 + len(raw)


def test_gradreg_predict_reads_tables_and_says_what_is_wrong(saved, tmp_path, capsys):
    directory = str(saved.save(tmp_path / "posterior"))
    raw = saved.inputs.example
    table = tmp_path / "x.csv"
    header = ",".join([f"f{i}" for i in range(raw.shape[1])] + ["species"])
    lines = [",".join([*map(str, row), "setosa"]) for row in raw]
    table.write_text("\n".join([header, *lines]) + "\n")

    code, _, err = _predict(["--model-uri", directory, "--input", str(table)], capsys)
    assert code == 2 and "column(s) species are not numbers" in err
    code, out, err = _predict(
        ["--model-uri", directory, "--input", str(table), "--drop-column", "species"], capsys
    )
    assert code == 0, err
    assert len(out.splitlines()) == 1 + len(raw)

    code, _, err = _predict(["--model-uri", directory, "--input", str(tmp_path / "no.npy")], capsys)
    assert code == 2 and "no such file" in err
    (tmp_path / "x.txt").write_text("1 2 3\n")
    code, _, err = _predict(["--model-uri", directory, "--input", str(tmp_path / "x.txt")], capsys)
    assert code == 2 and "unknown format .txt" in err
    np.save(tmp_path / "wide.npy", np.zeros((2, 9)))
    code, _, err = _predict(
        ["--model-uri", directory, "--input", str(tmp_path / "wide.npy")], capsys
    )
    assert code == 2 and "expected inputs of shape" in err
    code, _, err = _predict(
        ["--model-uri", str(tmp_path), "--input", str(table), "--drop-column", "species"], capsys
    )
    assert code == 2 and "not a saved posterior" in err
