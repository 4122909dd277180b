"""A trial's trained posterior as an MLflow model, and the sweep's best in the Model Registry.

The model is a ``pyfunc`` whose ``predict`` takes inputs in the dataset's own units (the
standardisation learnt from the training split travels inside it, in the saved posterior) and
returns the posterior-predictive class probabilities, one column per class. Its params:
``mode`` (the method's own predictive by default, or ``mean`` / ``sample`` / …),
``n_samples`` and ``seed`` for a sampled predictive.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from gradreg.export import DEFAULT_N_SAMPLES, MANIFEST_FILE, SavedPosterior
from sweeps.records import SweepRecord, TrialSummary
from sweeps.spec import SweepSpec
from sweeps.tracking import SWEEP_TAG, TRIAL_TAG, Tracker

MODEL_NAME = "model"  # the logged model's name within its run
POSTERIOR_ARTIFACT = "posterior"
MODEL_CODE = Path(__file__).with_name("model_code.py")


class PosteriorModel(mlflow.pyfunc.PythonModel):
    """MLflow's face of a `gradreg.export.SavedPosterior`."""

    # The model has an explicit signature (`signature`); MLflow's type-hint validation would
    # wrap predict and warn about its missing hints at every import.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.saved = SavedPosterior.load(context.artifacts[POSTERIOR_ARTIFACT])

    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        probs = self.saved.predict_proba(
            _as_array(model_input),
            params.get("mode") or None,
            int(params.get("n_samples", DEFAULT_N_SAMPLES)),
            int(params.get("seed", 0)),
        )
        return pd.DataFrame(probs, columns=list(self.saved.class_names))


def _as_array(model_input: Any) -> np.ndarray:
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_numpy(dtype=np.float64)
    if isinstance(model_input, Mapping):  # a single named tensor
        if len(model_input) != 1:
            raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    return np.asarray(model_input, dtype=np.float64)


def signature(saved: SavedPosterior) -> ModelSignature:
    raw_shape = saved.inputs.transform.raw_shape
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, *raw_shape))]),
        outputs=Schema([ColSpec("double", name) for name in saved.class_names]),
        params=ParamSchema(
            [
                ParamSpec("mode", "string", saved.predictives[0]),
                ParamSpec("n_samples", "long", DEFAULT_N_SAMPLES),
                ParamSpec("seed", "long", 0),
            ]
        ),
    )


def log_model(
    tracking_uri: str, run_id: str, saved: SavedPosterior, example: np.ndarray | None = None
) -> str:
    """Log ``saved`` as the run's pyfunc model; returns its ``models:/<model_id>`` URI.

    ``example`` holds a few raw inputs (`ModelInputs.example`), kept as its input example.
    """
    # Model.log reads the process-wide tracking URI; a trial process records to one store.
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    # Made here, in the run's experiment: Model.log would put it in the default experiment.
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        MODEL_NAME,
        source_run_id=run_id,
        tags={"gradreg.method": saved.config.method_name},
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = saved.save(Path(tmp, POSTERIOR_ARTIFACT))
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            # Models from code: loading runs this file, not a pickle of the class.
            python_model=str(MODEL_CODE),
            artifacts={POSTERIOR_ARTIFACT: str(directory)},
            signature=signature(saved),
            input_example=None if example is None else np.asarray(example, dtype=np.float64),
            # Listed, not inferred: inference loads the model in a subprocess (seconds per trial).
            pip_requirements=_requirements(),
            metadata={"gradreg_method": saved.config.method_name},
        )
    return info.model_uri


def download_posterior(model_uri: str, tmp: str, tracking_uri: str | None = None) -> Path:
    """The saved posterior inside the MLflow model at ``model_uri`` (a ``models:/`` or
    ``runs:/`` URI, or a local MLflow model directory), downloaded into ``tmp``; a saved
    posterior's own directory is taken as it is."""
    if (Path(model_uri).expanduser() / MANIFEST_FILE).is_file():
        return Path(model_uri).expanduser()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        downloaded = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
    except MlflowException as error:
        raise ValueError(f"--model-uri {model_uri}: {error.message}") from error
    directory = Path(downloaded, "artifacts", POSTERIOR_ARTIFACT)
    if not (directory / MANIFEST_FILE).is_file():
        raise ValueError(f"--model-uri {model_uri}: an MLflow model, but not a gradreg posterior")
    return directory


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("gradreg", "torch", "numpy", "pandas", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def register(
    tracking_uri: str,
    name: str,
    model_uri: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str,
) -> str:
    """A new version of registered model ``name`` from ``model_uri``; returns its version."""
    # MLflow resolves a models:/ source through the process-wide tracking URI.
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    model_id = model_uri.removeprefix("models:/")
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags=dict(tags),
        description=description,
        model_id=model_id,
    )
    return str(version.version)


def logged_model_uri(client: MlflowClient, run_id: str) -> str | None:
    """``models:/<model_id>`` of the model a run logged last, or None if it logged none."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    if not models:
        return None
    return f"models:/{max(models, key=lambda m: m.step).model_id}"


def register_trial_model(
    tracker: Tracker, spec: SweepSpec, record: SweepRecord, trial: TrialSummary, name: str
) -> dict[str, str]:
    """Register ``trial``'s model as a new version of ``name``, tagged with where it came
    from and what it scored; returns name, version and the version's URI."""
    run_id = trial.mlflow_run_id
    model_uri = logged_model_uri(tracker.client, run_id) if run_id else None
    if run_id is None or model_uri is None:
        raise LookupError(f"trial {trial.name} has no logged model to register")
    objective = spec.objectives[0]
    method = spec.method or str(trial.params.get("method", ""))
    tags = {
        SWEEP_TAG: record.sweep,
        "gradreg.sweep_name": spec.name,
        TRIAL_TAG: trial.trial_id,
        "gradreg.method": method,
        "gradreg.objective": f"{objective.metric}:{objective.goal}",
        **{
            f"metric.{key}": f"{value:.6g}"
            for key, value in trial.metrics.items()
            if key.startswith(("val_", "test_")) and key.count("_") == 1  # not _ts, _at_mean
        },
    }
    value = trial.metrics.get(objective.metric)
    description = (
        f"Best trial of sweep {spec.name} ({record.sweep}) by {objective.metric} "
        f"({objective.goal}): {value:.6g}; method {method}; trial {trial.name}."
        if value is not None
        else f"Best trial of sweep {spec.name} ({record.sweep}); method {method}."
    )
    version = register(tracker.tracking_uri, name, model_uri, run_id, tags, description)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}"}
