"""A trial's posterior as an MLflow model: logged, registered and served by a real MLflow
tracking server, loaded by `mlflow.pyfunc`, served by `mlflow models serve`, and read by
``gradreg predict``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.utils import SERVING_INPUT_FILENAME
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from gradreg.cli.main import main as gradreg_main
from gradreg.export import SavedPosterior
from gradreg.train import fit
from sweeps.cli import main as sweeps_main
from sweeps.model import (
    MODEL_CODE,
    POSTERIOR_ARTIFACT,
    log_model,
    logged_model_uri,
    register,
    registration_notes,
)
from sweeps.records import SweepRecord, TrialSummary
from sweeps.spec.parse import validate_shape
from tests.helpers.mlflow_server import MlflowServer, serving
from tests.helpers.specs import DIGITS_SWEEP

NAME = "iris-vl-uniform"
IMAGE_NAME = "digits-vl-uniform"
DIGITS_SHAPES = r"\(N, 8, 8\) or \(N, 1, 8, 8\) or \(N, 64\)"


def trained(dataset: str, hidden: int, epochs: int) -> SavedPosterior:
    """A small VL posterior (uniform variance) on ``dataset``, saved."""
    result = fit(
        {
            "dataset": dataset,
            "model": "mlp",
            "model_options": {"hidden": [hidden]},
            "method": "vl",
            "variance": "uniform",
            "noise_scale": 0.05,
            "epochs": epochs,
            "lr": 0.01,
            "device": "cpu",
        }
    )
    return result.saved()


@pytest.fixture(scope="module")
def saved() -> SavedPosterior:
    return trained("iris", hidden=16, epochs=2)


@pytest.fixture(scope="module")
def image() -> SavedPosterior:
    """A digits posterior: raw inputs (8, 8), the network's (1, 8, 8)."""
    return trained("digits", hidden=8, epochs=1)


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


@pytest.fixture(scope="module")
def registered_image(image, server):
    """(run id, model URI, registered version) of the digits posterior."""
    client = MlflowClient(server.url)
    run_id = client.create_run(client.create_experiment("images")).info.run_id
    model_uri = log_model(server.url, run_id, image, image.inputs.example)
    return run_id, model_uri, register(server.url, IMAGE_NAME, model_uri, run_id, {}, "")


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

    # No input schema: MLflow's would refuse float32 or a shape the model takes (see
    # test_the_model_takes_every_input_form); the accepted shapes are in the metadata.
    assert model.metadata.get_input_schema() is None
    assert model.metadata.metadata["gradreg_input_shapes"] == [[-1, 4]]
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"mode": saved.predictives[0], "n_samples": 32, "seed": 0}
    # A second registration is the next version of the same model.
    assert register(server.url, NAME, model_uri, run_id, {}, "") == str(int(version) + 1)


def test_the_model_takes_every_input_form(image, saved, server, registered, registered_image):
    """Images with or without their channel axis or flat, tables, in float32 or float64 (or
    integers), as numpy arrays, torch tensors, DataFrames or nested lists."""
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model(f"models:/{IMAGE_NAME}/{registered_image[2]}")
    assert model.metadata.get_input_schema() is None
    assert model.metadata.metadata["gradreg_input_shapes"] == [[-1, 8, 8], [-1, 1, 8, 8], [-1, 64]]
    raw = np.rint(image.inputs.example)  # digits' pixels, whole numbers: exact in float32
    expected = image.predict_proba(raw, "mean")
    forms = {
        "(N, 8, 8) float64": raw,
        "(N, 8, 8) float32": raw.astype(np.float32),
        "(N, 8, 8) int64": raw.astype(np.int64),
        "(N, 1, 8, 8) float64": raw.reshape(-1, 1, 8, 8),
        "(N, 1, 8, 8) float32": raw.reshape(-1, 1, 8, 8).astype(np.float32),
        "(N, 64) float32": raw.reshape(-1, 64).astype(np.float32),
        "tensor (N, 1, 8, 8) float32": torch.tensor(raw, dtype=torch.float32).reshape(-1, 1, 8, 8),
        "tensor (N, 8, 8) float64": torch.tensor(raw),
        "DataFrame of 64 float32 columns": pd.DataFrame(raw.reshape(-1, 64).astype(np.float32)),
        "nested list (N, 1, 8, 8)": raw.reshape(-1, 1, 8, 8).tolist(),
    }
    for form, x in forms.items():
        out = model.predict(x, params={"mode": "mean"})
        assert list(out.columns) == list(image.class_names), form
        assert np.array_equal(out.to_numpy(), expected), form

    table = mlflow.pyfunc.load_model(registered[1])
    rows = saved.inputs.example
    as_float32 = rows.astype(np.float32)
    expected = saved.predict_proba(as_float32.astype(np.float64), "mean")
    columns = [f"f{i}" for i in range(rows.shape[1])]
    for form, x in {
        "float32": as_float32,
        "tensor float32": torch.from_numpy(as_float32),
        "DataFrame float32": pd.DataFrame(as_float32, columns=columns),
    }.items():
        out = table.predict(x, params={"mode": "mean"})
        assert np.allclose(out.to_numpy(), expected, rtol=0, atol=1e-12), form
    float64 = table.predict(rows, params={"mode": "mean"}).to_numpy()
    assert np.allclose(float64, saved.predict_proba(rows, "mean"), rtol=0, atol=1e-12)
    assert np.allclose(float64, expected, rtol=0, atol=1e-5)  # float32's rounding, no more


def test_bad_inputs_to_the_model_say_what_it_takes(
    image, saved, server, registered, registered_image
):
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model(registered_image[1])
    raw = image.inputs.example
    nan = raw.copy()
    nan[0, 3, 3] = np.nan
    refused = [
        (np.zeros((2, 7)), DIGITS_SHAPES + r", got \(2, 7\)"),
        (np.zeros((2, 2, 8, 8), np.float32), DIGITS_SHAPES + r", got \(2, 2, 8, 8\)"),
        (raw[0], DIGITS_SHAPES + r", got \(8, 8\)"),  # one image without its N axis
        (nan, r"inputs hold 1 NaN or infinite value\(s\)"),
        (np.full((2, 64), "a"), r"inputs must be numbers, got dtype <U1"),
        ([[0.0] * 64, [0.0] * 63], r"inputs must be one rectangular array"),
        (pd.DataFrame({"x": [1.0], "label": ["a"]}), r"input column\(s\) label are not numbers"),
    ]
    for x, message in refused:
        with pytest.raises(MlflowException, match=message) as caught:
            model.predict(x)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match=r"has no predictive 'laplace'; accepted: sample"):
        model.predict(raw, params={"mode": "laplace"})
    # A table's model refuses a missing or an extra column, rather than dropping one.
    table = mlflow.pyfunc.load_model(registered[1])
    for n_columns in (3, 5):
        with pytest.raises(MlflowException, match=rf"shape \(N, 4\), got \(2, {n_columns}\)"):
            table.predict(np.zeros((2, n_columns), np.float32))


def test_a_model_logged_with_the_earlier_tensor_schema_still_predicts(saved, tmp_path):
    """Models logged before the signature lost its input schema: MLflow enforces theirs (a
    float64 tensor of the raw shape), and the model predicts as it did."""
    directory = saved.save(tmp_path / POSTERIOR_ARTIFACT)
    earlier = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 4))]),
        outputs=Schema([ColSpec("double", name) for name in saved.class_names]),
        params=ParamSchema([ParamSpec("mode", "string", "sample")]),
    )
    mlflow.pyfunc.save_model(
        tmp_path / "model",
        python_model=str(MODEL_CODE),
        artifacts={POSTERIOR_ARTIFACT: str(directory)},
        signature=earlier,
        input_example=saved.inputs.example,
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    raw = saved.inputs.example
    out = model.predict(raw, params={"mode": "mean"}).to_numpy()
    assert np.allclose(out, saved.predict_proba(raw, "mean"), rtol=0, atol=1e-12)


def test_a_registered_version_says_what_it_scored_first_and_briefly():
    """MLflow's model page shows a version's description to 29 characters and a tag whole up
    to 30 of key and value: the objective's value, the method and the dataset come first."""
    spec = validate_shape(DIGITS_SWEEP)
    sweep_id = "0f3c9a2b7d4e4b1a9c8d7e6f5a4b3c2d"  # the service's sweeps have such ids
    record = SweepRecord(sweep_id, {}, "sqlite://", "1", "parent", None)
    metrics = {"val_nll": 0.1234567, "val_accuracy": 0.9722222, "val_nll_ts": 0.11, "test_nll": 2}
    trial = TrialSummary("a1b2_00003", "digits-small-t3-00003", "succeeded", {}, metrics, "run")
    tags, description = registration_notes(spec, record, trial)
    assert description == (
        f"val_nll 0.1235, vl-uniform, digits. Best trial of sweep digits-small ({sweep_id}) by "
        "val_nll (minimize): digits-small-t3-00003."
    )
    assert tags == {
        "objective": "val_nll=0.1235",
        "method": "vl-uniform",
        "dataset": "digits",
        "sweep": "digits-small",
        "trial": "digits-small-t3-00003",
        "gradreg.sweep": sweep_id,
        "gradreg.trial_id": "a1b2_00003",
        "metric.val_nll": "0.123457",
        "metric.val_accuracy": "0.972222",
        "metric.test_nll": "2",
    }
    assert list(tags)[:3] == ["objective", "method", "dataset"]  # shown in this order
    for key in ("objective", "method", "dataset", "sweep", "trial"):
        assert len(key) + len(tags[key]) <= 30, key

    # A sweep run from the CLI is named by its spec: said once. A file dataset by its file.
    spec = validate_shape(
        {
            **DIGITS_SWEEP,
            "dataset": {"name": "file", "options": {"path": "tables/animals.csv"}},
            "objectives": [{"metric": "val_accuracy"}],
        }
    )
    record = SweepRecord("digits-small", {}, "sqlite://", "1", "parent", None)
    tags, description = registration_notes(spec, record, trial)
    assert description.startswith(
        "val_accuracy 0.9722, vl-uniform, animals.csv. Best trial of sweep digits-small by "
        "val_accuracy (maximize)"
    )
    assert tags["objective"] == "val_accuracy=0.9722" and tags["dataset"] == "animals.csv"


def _served(url: str, body: dict[str, Any], class_names: tuple[str, ...]) -> np.ndarray:
    answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    return np.array([[row[name] for name in class_names] for row in rows])


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_probabilities(
    image, saved, server, registered, registered_image, tmp_path
):
    raw = np.rint(image.inputs.example)  # digits' pixels, whole numbers
    expected = image.predict_proba(raw, "mean")
    model_uri = f"models:/{IMAGE_NAME}/{registered_image[2]}"
    with serving(model_uri, server.url, tmp_path / "image.log") as url:
        for shape in [(-1, 8, 8), (-1, 1, 8, 8), (-1, 64)]:
            body = {"inputs": raw.reshape(shape).tolist(), "params": {"mode": "mean"}}
            served = _served(url, body, image.class_names)
            assert np.allclose(served, expected, rtol=0, atol=1e-9), shape
        # A named single tensor, as MLflow's clients send a dict of arrays.
        body = {"inputs": {"x": raw.astype(int).tolist()}, "params": {"mode": "mean"}}
        assert np.allclose(_served(url, body, image.class_names), expected, rtol=0, atol=1e-9)
        # The serving example MLflow keeps with the model, as a client would send it.
        model_dir = mlflow.artifacts.download_artifacts(
            registered_image[1], dst_path=str(tmp_path / "model"), tracking_uri=server.url
        )
        body = json.loads(Path(model_dir, SERVING_INPUT_FILENAME).read_text())
        served_example = _served(url, body, image.class_names)
        assert np.allclose(
            served_example, image.predict_proba(image.inputs.example), rtol=0, atol=1e-9
        )
        # The sampled predictive, with its params.
        body = {"inputs": raw.tolist(), "params": {"mode": "sample", "n_samples": 4, "seed": 1}}
        sampled = image.predict_proba(raw, "sample", n_samples=4, seed=1)
        assert np.allclose(_served(url, body, image.class_names), sampled, rtol=0, atol=1e-9)

        answer = httpx.post(
            f"{url}/invocations", json={"inputs": np.zeros((2, 7)).tolist()}, timeout=30
        )
        assert answer.status_code == 400
        assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        message = answer.json()["message"]
        assert (
            "expected inputs of shape (N, 8, 8) or (N, 1, 8, 8) or (N, 64), got (2, 7)" in message
        )
        answer = httpx.post(
            f"{url}/invocations",
            json={"inputs": raw.tolist(), "params": {"mode": "laplace"}},
            timeout=30,
        )
        assert answer.status_code == 400 and "has no predictive 'laplace'" in answer.text

    rows = saved.inputs.example
    expected = saved.predict_proba(rows, "mean")
    with serving(registered[1], server.url, tmp_path / "table.log") as url:
        body = {"inputs": rows.tolist(), "params": {"mode": "mean"}}
        assert np.allclose(_served(url, body, saved.class_names), expected, rtol=0, atol=1e-9)
        # A DataFrame, split: its columns by position.
        split = pd.DataFrame(rows, columns=[f"f{i}" for i in range(4)]).to_dict(orient="split")
        body = {"dataframe_split": split, "params": {"mode": "mean"}}
        assert np.allclose(_served(url, body, saved.class_names), expected, rtol=0, atol=1e-9)
        answer = httpx.post(
            f"{url}/invocations", json={"inputs": np.zeros((2, 5)).tolist()}, timeout=30
        )
        assert answer.status_code == 400
        assert "expected inputs of shape (N, 4), got (2, 5)" in answer.json()["message"]


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


def test_sweeps_predict_finds_the_model_where_mlflow_tracking_uri_says(
    saved, server, registered, tmp_path
):
    """MLflow reads its own variable: without --tracking-uri the command asks MLflow's default,
    $MLFLOW_TRACKING_URI (a fresh process: this one has set MLflow's tracking URI already)."""
    raw = saved.inputs.example
    np.save(tmp_path / "x.npy", raw)
    command = [
        sys.executable, "-m", "sweeps", "predict", "--model-uri", f"models:/{NAME}/{registered[2]}",
        "--input", str(tmp_path / "x.npy"), "--mode", "mean",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    probs = np.array([[float(r[f"p_{name}"]) for name in saved.class_names] for r in rows])
    assert np.allclose(probs, saved.predict_proba(raw, "mean"), rtol=1e-8, atol=0)


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
