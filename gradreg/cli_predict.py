"""``python -m gradreg predict``: class probabilities from a saved posterior, without a server.

The model is a saved posterior's directory (`gradreg.export`), an MLflow model directory that
wraps one, or an MLflow URI (``models:/NAME/VERSION``, ``models:/MODEL_ID``,
``runs:/RUN_ID/model``; MLflow is then needed, and ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` says where the models are). Inputs are in the dataset's own units:
an ``.npy`` array, an ``.npz`` with an array ``x`` (or a single array), or a CSV / Parquet
table of feature columns.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from gradreg.export import DEFAULT_N_SAMPLES, MANIFEST_FILE, SavedPosterior

# Where an MLflow model built by `sweeps.model` keeps the saved posterior.
MLFLOW_POSTERIOR_DIR = Path("artifacts", "posterior")
TABLE_FORMATS = (".csv", ".parquet")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-uri",
        required=True,
        help="a saved posterior or MLflow model directory, or an MLflow URI (models:/NAME/VERSION)",
    )
    p.add_argument("--input", required=True, help=".npy, .npz (array x), .csv or .parquet")
    p.add_argument("--output", help="CSV to write (default: standard output)")
    p.add_argument("--mode", help="predictive: the method's own by default; mean, sample, …")
    p.add_argument("--n-samples", type=int, default=DEFAULT_N_SAMPLES)
    p.add_argument("--seed", type=int, default=0, help="seed of a sampled predictive")
    p.add_argument(
        "--drop-column",
        action="append",
        default=[],
        metavar="NAME",
        help="a table column that is not a feature (e.g. the label); repeatable",
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking server of an MLflow URI (default: $MLFLOW_TRACKING_URI)",
    )


def run_predict(args: argparse.Namespace) -> int:
    inputs = read_inputs(Path(args.input), args.drop_column)
    with tempfile.TemporaryDirectory() as tmp:
        saved = SavedPosterior.load(_posterior_directory(args.model_uri, args.tracking_uri, tmp))
    probs = saved.predict_proba(inputs, args.mode, args.n_samples, args.seed)
    table = prediction_table(probs, saved.class_names)
    if args.output:
        Path(args.output).write_text(table)
    else:
        sys.stdout.write(table)
    return 0


def prediction_table(probs: np.ndarray, class_names: tuple[str, ...]) -> str:
    """CSV: one probability column per class, the predicted class and the entropy (nats)."""
    entropy = -np.sum(probs * np.log(np.clip(probs, np.finfo(np.float64).tiny, None)), axis=1)
    predicted = probs.argmax(axis=1)
    header = [*(f"p_{name}" for name in class_names), "predicted", "entropy"]
    lines = [",".join(_csv_field(h) for h in header)]
    for row, index, h in zip(probs, predicted, entropy, strict=True):
        cells = [f"{p:.9g}" for p in row] + [_csv_field(class_names[index]), f"{h:.9g}"]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def read_inputs(path: Path, drop_columns: list[str]) -> np.ndarray:
    """The raw inputs in ``path`` as a float64 array (N, ...)."""
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    suffix = path.suffix.lower()
    if drop_columns and suffix not in TABLE_FORMATS:
        raise ValueError(f"--drop-column applies to CSV and Parquet tables, not {suffix} files")
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "x" in names:
                array = archive["x"]
            elif len(names) == 1:
                array = archive[names[0]]
            else:
                raise ValueError(
                    f"--input {path}: holds {', '.join(names)}; name the inputs array x"
                )
    elif suffix in TABLE_FORMATS:
        array = _read_table(path, suffix, drop_columns)
    else:
        raise ValueError(
            f"--input {path}: unknown format {suffix or '(no suffix)'}; give .npy, .npz, .csv "
            "or .parquet"
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"--input {path}: inputs must be numbers, got dtype {array.dtype}")
    return np.asarray(array, dtype=np.float64)


def _read_table(path: Path, suffix: str, drop_columns: list[str]) -> np.ndarray:
    try:
        import pandas as pd
    except ImportError as error:  # pandas comes with gradreg[sweeps]
        raise ValueError(f"reading {suffix} tables needs pandas: pip install pandas") from error
    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    missing = [c for c in drop_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"--drop-column {', '.join(missing)}: not a column of {path}")
    frame = frame.drop(columns=drop_columns)
    text = [str(c) for c in frame.columns if frame[c].dtype.kind not in "biuf"]
    if text:
        raise ValueError(
            f"--input {path}: column(s) {', '.join(text)} are not numbers; drop them with "
            "--drop-column"
        )
    return frame.to_numpy(dtype=np.float64)


def _posterior_directory(model_uri: str, tracking_uri: str | None, tmp: str) -> Path:
    """The saved posterior's directory for ``model_uri``, downloaded into ``tmp`` if remote."""
    local = Path(model_uri).expanduser()
    if local.is_dir():
        for candidate in (local, local / MLFLOW_POSTERIOR_DIR):
            if (candidate / MANIFEST_FILE).is_file():
                return candidate
        raise FileNotFoundError(
            f"--model-uri {model_uri}: neither a saved posterior nor an MLflow model of one "
            f"(no {MANIFEST_FILE} in it or in {MLFLOW_POSTERIOR_DIR})"
        )
    if "://" not in model_uri and ":/" not in model_uri:
        raise FileNotFoundError(f"--model-uri {model_uri}: no such directory")
    try:
        import mlflow
    except ImportError as error:
        raise ValueError(
            f"--model-uri {model_uri} is an MLflow URI: install gradreg[sweeps] for MLflow"
        ) from error
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
    directory = Path(downloaded) / MLFLOW_POSTERIOR_DIR
    if not (directory / MANIFEST_FILE).is_file():
        raise ValueError(f"--model-uri {model_uri}: an MLflow model, but not a gradreg posterior")
    return directory
