"""``python -m gradreg predict``: class probabilities from a saved posterior, without a server.

The model is a saved posterior's directory (`gradreg.export`). An MLflow model or URI
(``models:/NAME/VERSION``) is read by ``python -m sweeps predict``, which downloads it and
runs this same command: gradreg itself has no MLflow. Inputs are in the dataset's own units:
an ``.npy`` array, an ``.npz`` with an array ``x`` (or a single array), or a CSV / Parquet
table of feature columns. A model built by the user's own builder needs its code on the import
path: ``--code DIR`` puts it there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradreg.cli.options import add_code_argument, code_of
from gradreg.export import DEFAULT_N_SAMPLES, MANIFEST_FILE, SavedPosterior

TABLE_FORMATS = (".csv", ".parquet")
# model URI, a scratch directory -> the saved posterior's directory
Locate = Callable[[str, str], Path]


def add_predict_arguments(
    p: argparse.ArgumentParser, model_help: str = "a saved posterior's directory"
) -> None:
    p.add_argument("--model-uri", required=True, help=model_help)
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
    add_code_argument(p)


def run_predict(args: argparse.Namespace, locate: Locate | None = None) -> int:
    """Predict for ``args``; ``locate`` finds the saved posterior (default: a local one)."""
    inputs = read_inputs(Path(args.input), args.drop_column)
    with tempfile.TemporaryDirectory() as tmp, code_of(args):
        saved = SavedPosterior.load((locate or saved_directory)(args.model_uri, tmp))
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
    values: np.ndarray = frame.to_numpy(dtype=np.float64)
    return values


def saved_directory(model_uri: str, _tmp: str = "") -> Path:
    """``model_uri`` as the directory of a saved posterior, or an error saying what it is."""
    local = Path(model_uri).expanduser()
    if (local / MANIFEST_FILE).is_file():
        return local
    if local.is_dir():
        raise FileNotFoundError(
            f"--model-uri {model_uri}: not a saved posterior (no {MANIFEST_FILE}); for an "
            "MLflow model directory use python -m sweeps predict"
        )
    if ":/" in model_uri:
        raise ValueError(
            f"--model-uri {model_uri} is an MLflow URI: python -m sweeps predict reads those "
            "(the same arguments, and --tracking-uri)"
        )
    raise FileNotFoundError(f"--model-uri {model_uri}: no such directory")
