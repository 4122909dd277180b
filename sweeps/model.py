"""A trial's trained posterior as an MLflow model, and the sweep's best in the Model Registry.

The model is a ``pyfunc`` whose ``predict`` takes inputs in the dataset's own units (the
standardisation learnt from the training split travels inside it, in the saved posterior) and
returns the posterior-predictive class probabilities, one column per class. Its params:
``mode`` (the method's own predictive by default, or ``mean`` / ``sample`` / …),
``n_samples`` and ``seed`` for a sampled predictive.

Inputs: a numpy array, torch tensor, nested list or DataFrame of any real or integer dtype, in
any of the shapes `InputTransform.accepted_shapes` lists (an image with or without its channel
axis, or flat). The signature declares no input schema, on purpose: MLflow enforces a tensor
schema's dtype exactly and its rank exactly (a float64 ``(-1, 8, 8)`` refuses float32 and
``(N, 1, 8, 8)``), and a column schema either refuses unnamed arrays (named columns) or cuts
extra columns off unseen (unnamed ones). `PosteriorModel.predict` checks shape, dtype and
values itself and raises an MlflowException naming what it accepts (HTTP 400 when served).
The accepted shapes are in the model's metadata (``gradreg_input_shapes``). Models logged
with the earlier float64 tensor schema still load and predict; MLflow enforces their schema.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from gradreg.data import FILE_DATASET
from gradreg.export import DEFAULT_N_SAMPLES, MANIFEST_FILE, SavedPosterior
from sweeps.records import SweepRecord, TrialSummary
from sweeps.spec import SweepSpec
from sweeps.tracking import SWEEP_TAG, TRIAL_TAG, Tracker

MODEL_NAME = "model"  # the logged model's name within its run
POSTERIOR_ARTIFACT = "posterior"
MODEL_CODE = Path(__file__).with_name("model_code.py")


class PosteriorModel(PythonModel):
    """MLflow's face of a `gradreg.export.SavedPosterior`."""

    # The model has an explicit signature (`signature`); MLflow's type-hint validation would
    # wrap predict and warn about its missing hints at every import.
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.saved = SavedPosterior.load(context.artifacts[POSTERIOR_ARTIFACT])

    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        try:
            probs = self.saved.predict_proba(
                _as_array(model_input),
                params.get("mode") or None,
                int(params.get("n_samples", DEFAULT_N_SAMPLES)),
                int(params.get("seed", 0)),
            )
        except (ValueError, TypeError) as error:  # the input's or a param's fault: say which
            raise MlflowException.invalid_parameter_value(str(error)) from error
        return pd.DataFrame(probs, columns=list(self.saved.class_names))


def _as_array(model_input: Any) -> np.ndarray:
    """``model_input`` as one numpy array, its dtype kept (the transform checks shape, dtype
    and values, and computes in the training data's precision)."""
    if isinstance(model_input, pd.DataFrame):
        wrong = [
            str(column)
            for column, dtype in model_input.dtypes.items()
            if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_complex_dtype(dtype)
        ]
        if wrong:
            raise ValueError(f"input column(s) {', '.join(wrong)} are not numbers")
        return model_input.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(model_input, Mapping):  # a single named tensor
        if len(model_input) != 1:
            raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, torch.Tensor):
        tensor = model_input.detach().cpu()
        return (tensor.double() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    try:
        return np.asarray(model_input)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"inputs must be one rectangular array: {error}") from None


def signature(saved: SavedPosterior) -> ModelSignature:
    """Outputs and params only: the inputs are checked by `PosteriorModel.predict` (see the
    module's docstring for why MLflow's input schemas do not fit)."""
    return ModelSignature(
        inputs=None,
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
    tracking_uri: str,
    run_id: str,
    saved: SavedPosterior,
    example: np.ndarray | None = None,
    *,
    code_paths: Sequence[str] = (),
    requirements: Sequence[str] = (),
    experiment_id: str | None = None,
) -> str:
    """Log ``saved`` as the run's pyfunc model; returns its ``models:/<model_id>`` URI.

    ``example`` holds a few raw inputs (`ModelInputs.example`), kept as its input example.
    ``code_paths``: the user's modules and packages the model carries (a builder of their
    own), which MLflow puts first on the import path when it loads the model, so it loads and
    serves where they are not installed; ``requirements``: the sweep's pip requirements, added
    to the model's; ``experiment_id``: the run's, where the caller knows it (else it is read).
    """
    # Model.log reads the process-wide tracking URI; a trial process records to one store.
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    # Made here, in the run's experiment: Model.log would put it in the default experiment.
    logged = client.create_logged_model(
        experiment_id or client.get_run(run_id).info.experiment_id,
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
            pip_requirements=[*_requirements(), *requirements],
            code_paths=list(code_paths) or None,
            metadata={
                "gradreg_method": saved.config.method_name,
                "gradreg_input_shapes": [
                    [-1, *shape] for shape in saved.inputs.transform.accepted_shapes
                ],
            },
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


def carried_code(posterior: Path) -> Path | None:
    """The user's code an MLflow model carries (its ``code_paths``, which MLflow copies into
    the model's directory), when ``posterior`` lies in a downloaded MLflow model that has
    some; else None."""
    model_dir = posterior.parent.parent
    if not (model_dir / "MLmodel").is_file():
        return None
    flavor = Model.load(str(model_dir)).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
    code = flavor.get("code")
    return model_dir / code if code and (model_dir / code).is_dir() else None


@functools.cache
def _requirements() -> tuple[str, ...]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("gradreg", "torch", "numpy", "pandas", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return tuple(pins)


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


def registered_version(tracking_uri: str, name: str, run_id: str) -> str | None:
    """The newest version of registered model ``name`` made from run ``run_id``, if any."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # By run id only (hex): a model's name may hold quotes, which a filter string cannot.
    found = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    return str(max(int(v.version) for v in found)) if found else None


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
    """Register ``trial``'s model as a new version of ``name``, described and tagged with what
    it scored and where it came from (`registration_notes`); returns name, version and the
    version's URI. A trial whose model is already a version of ``name`` (the best of a sweep
    that was extended and found nothing better) keeps that version: no new one is made."""
    run_id = trial.mlflow_run_id
    model_uri = logged_model_uri(tracker.client, run_id) if run_id else None
    if run_id is None or model_uri is None:
        raise LookupError(f"trial {trial.name} has no logged model to register")
    version = registered_version(tracker.tracking_uri, name, run_id)
    if version is None:
        tags, description = registration_notes(spec, record, trial)
        version = register(tracker.tracking_uri, name, model_uri, run_id, tags, description)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}"}


def registration_notes(
    spec: SweepSpec, record: SweepRecord, trial: TrialSummary
) -> tuple[dict[str, str], str]:
    """A registered version's tags and description, the essentials first and short: MLflow's
    model page shows a version's description to 29 characters and "..." (and only its first
    line), and a tag whole up to 30 characters of key and value together. The description
    opens with the objective's value, the method and the dataset; the sweep and the trial
    follow. Tags: ``objective`` (``val_nll=0.1234``), ``method``, ``dataset``, ``sweep`` (the
    spec's name), ``trial`` (its name), the sweep's and the trial's ids as the runs carry them
    (``gradreg.sweep``, ``gradreg.trial_id``), then the trial's plain ``val_*``/``test_*``
    metrics as ``metric.<name>`` (6 significant digits)."""
    objective = spec.objectives[0]
    method = spec.method or str(trial.params.get("method", ""))
    dataset = _dataset_label(spec)
    value = trial.metrics.get(objective.metric)
    scored = objective.metric if value is None else f"{objective.metric}={value:.4g}"
    tags = {
        "objective": scored,
        "method": method,
        "dataset": dataset,
        "sweep": spec.name,
        "trial": trial.name,
        SWEEP_TAG: record.sweep,  # the ids, under the keys the runs carry them
        TRIAL_TAG: trial.trial_id,
        **{
            f"metric.{key}": f"{number:.6g}"
            for key, number in trial.metrics.items()
            if key.startswith(("val_", "test_")) and key.count("_") == 1  # not _ts, _at_mean
        },
    }
    score = f"{objective.metric} not reported" if value is None else scored.replace("=", " ")
    sweep = spec.name if record.sweep == spec.name else f"{spec.name} ({record.sweep})"
    description = (
        f"{score}, {method}, {dataset}. Best trial of sweep {sweep} by {objective.metric} "
        f"({objective.goal}): {trial.name}."
    )
    return tags, description


def _dataset_label(spec: SweepSpec) -> str:
    """The dataset's name; a file dataset's file name (``animals.csv``); a loader's entry
    point."""
    if spec.dataset.name == FILE_DATASET and spec.dataset.options.get("path"):
        return PurePosixPath(str(spec.dataset.options["path"])).name
    return spec.dataset.identifier
