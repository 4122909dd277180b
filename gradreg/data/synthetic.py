"""Datasets generated in-process from a seed: sklearn's moons and blobs, and MNIST-1D with its
cache (a file per generation setting under ``$GRADREG_CACHE_DIR``, and a copy in memory).

Each generator returns one pool (features, labels) for `gradreg.data.splits` to split.
sklearn is imported where it is used: importing it costs about 2 s, and the sweep driver, which
only checks specs, would pay that before every sweep's first trial.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gradreg import settings
from gradreg.data.options import check_float, check_int
from gradreg.data.splits import Arrays
from gradreg.files import replace_atomically


def make_moons(n_samples: int, noise: float, data_seed: int) -> Arrays:
    from sklearn import datasets as sk_datasets

    x, y = sk_datasets.make_moons(
        n_samples=check_int("n_samples", n_samples, 1),
        noise=check_float("noise", noise, positive=False),
        random_state=check_int("data_seed", data_seed, 0),
    )
    return x, y


def make_blobs(
    n_samples: int, n_classes: int, n_features: int, cluster_std: float, data_seed: int
) -> Arrays:
    from sklearn import datasets as sk_datasets

    x, y = sk_datasets.make_blobs(
        n_samples=check_int("n_samples", n_samples, 1),
        centers=check_int("n_classes", n_classes, 2),
        n_features=check_int("n_features", n_features, 1),
        cluster_std=check_float("cluster_std", cluster_std, positive=True),
        random_state=check_int("data_seed", data_seed, 0),
    )
    return x, y


# ---------------------------------------------------------------- MNIST-1D

_MNIST1D_MEMO: dict[str, Arrays] = {}


def _mnist1d_args(data_seed: int, n_samples: int) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args: dict[str, Any] = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by the package's download path, never here
    args["seed"] = data_seed
    args["num_samples"] = n_samples
    return args


def _generate_mnist1d(args: dict[str, Any]) -> Arrays:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # mnist1d seeds the global `random` and `np.random` generators; restore them afterwards.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
    y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    return x, y


def _read_cache(path: Path) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            x, y = stored["x"], stored["y"]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # unreadable or partial cache: regenerate
    return (x, y) if x.ndim == 2 and len(x) == len(y) else None


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Keep the generated arrays for the next process; a cache that cannot be written is a
    warning, not an error (the data are in hand)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda handle: np.savez(handle, x=x, y=y))
    except OSError as error:
        warnings.warn(f"could not cache mnist1d at {path}: {error}", stacklevel=3)


def load_mnist1d(data_seed: int, n_samples: int = 5000) -> Arrays:
    args = _mnist1d_args(
        check_int("data_seed", data_seed, 0), check_int("n_samples", n_samples, 50)
    )
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    if key in _MNIST1D_MEMO:
        return _MNIST1D_MEMO[key]
    path = settings.cache_dir() / f"mnist1d-{key}.npz"
    arrays = _read_cache(path) if path.exists() else None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _write_cache(path, *arrays)
    for array in arrays:
        array.setflags(write=False)
    _MNIST1D_MEMO[key] = arrays
    return arrays
