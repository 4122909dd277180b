"""Offline classification datasets by name, with seeded stratified train/val/test splits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "n_classes": self.n_classes,
            "input_shape": self.input_shape,
        }


@dataclass(frozen=True)
class _DatasetSpec:
    description: str
    generate: Callable[..., Arrays]
    defaults: dict[str, Any]
    # Per-example shape for image-like data (standardised with one global mean/std);
    # None means tabular, standardised per feature.
    image_shape: tuple[int, ...] | None = None


# ---------------------------------------------------------------- option checks


def _check_int(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{option} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(option: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{option} must be finite and {bound}, got {value}")
    return value


# ---------------------------------------------------------------- generators


def _sklearn_loader(load: Callable[..., Any]) -> Callable[..., Arrays]:
    def generate() -> Arrays:
        return load(return_X_y=True)

    return generate


def _make_moons(n_samples: int, noise: float, data_seed: int) -> Arrays:
    return sk_datasets.make_moons(
        n_samples=_check_int("n_samples", n_samples, 1),
        noise=_check_float("noise", noise, positive=False),
        random_state=_check_int("data_seed", data_seed, 0),
    )


def _make_blobs(
    n_samples: int, n_classes: int, n_features: int, cluster_std: float, data_seed: int
) -> Arrays:
    return sk_datasets.make_blobs(
        n_samples=_check_int("n_samples", n_samples, 1),
        centers=_check_int("n_classes", n_classes, 2),
        n_features=_check_int("n_features", n_features, 1),
        cluster_std=_check_float("cluster_std", cluster_std, positive=True),
        random_state=_check_int("data_seed", data_seed, 0),
    )


_MNIST1D_MEMO: dict[str, Arrays] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("GRADREG_CACHE_DIR", "~/.cache/gradreg")).expanduser()


def _mnist1d_args(data_seed: int) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by the package's download path, never here
    args["seed"] = data_seed
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


def _write_cache_atomically(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"could not cache mnist1d in {path.parent}: {error}", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x=x, y=y)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the cache is meant to be shared
        os.replace(tmp_name, path)
    except OSError as error:
        Path(tmp_name).unlink(missing_ok=True)
        warnings.warn(f"could not cache mnist1d at {path}: {error}", stacklevel=3)


def _load_mnist1d(data_seed: int) -> Arrays:
    args = _mnist1d_args(_check_int("data_seed", data_seed, 0))
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    if key in _MNIST1D_MEMO:
        return _MNIST1D_MEMO[key]
    path = _cache_dir() / f"mnist1d-{key}.npz"
    arrays = _read_cache(path) if path.exists() else None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _write_cache_atomically(path, *arrays)
    for array in arrays:
        array.setflags(write=False)
    _MNIST1D_MEMO[key] = arrays
    return arrays


_DATASETS: dict[str, _DatasetSpec] = {
    "digits": _DatasetSpec(
        "sklearn handwritten digits: 1797 8x8 grey images, 10 classes",
        _sklearn_loader(sk_datasets.load_digits),
        {},
        image_shape=(1, 8, 8),
    ),
    "iris": _DatasetSpec(
        "sklearn iris: 150 flowers, 4 features, 3 classes",
        _sklearn_loader(sk_datasets.load_iris),
        {},
    ),
    "wine": _DatasetSpec(
        "sklearn wine: 178 wines, 13 features, 3 classes",
        _sklearn_loader(sk_datasets.load_wine),
        {},
    ),
    "breast_cancer": _DatasetSpec(
        "sklearn breast cancer: 569 tumours, 30 features, 2 classes",
        _sklearn_loader(sk_datasets.load_breast_cancer),
        {},
    ),
    "mnist1d": _DatasetSpec(
        "MNIST-1D generated locally: 5000 signals of length 40, 10 classes",
        _load_mnist1d,
        {"data_seed": 42},
        image_shape=(1, 40),
    ),
    "moons": _DatasetSpec(
        "synthetic two interleaving half-circles in 2D, 2 classes",
        _make_moons,
        {"n_samples": 1000, "noise": 0.2, "data_seed": 0},
    ),
    "blobs": _DatasetSpec(
        "synthetic isotropic Gaussian blobs, one per class",
        _make_blobs,
        {"n_samples": 1000, "n_classes": 3, "n_features": 2, "cluster_std": 1.0, "data_seed": 0},
    ),
}


def available_datasets() -> dict[str, str]:
    """Dataset names mapped to a one-line description."""
    return {name: spec.description for name, spec in _DATASETS.items()}


# ---------------------------------------------------------------- splitting


def _check_fraction(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number in (0, 1), got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"{option} must be in (0, 1), got {value}")
    return float(value)


def _stratified_split(
    labels: np.ndarray, n_classes: int, split_seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test examples, stratified by label."""
    n_total = len(labels)
    n_test = round(test_fraction * n_total)
    n_val = round(val_fraction * n_total)
    sizes = {"train": n_total - n_test - n_val, "val": n_val, "test": n_test}
    for split, size in sizes.items():
        if size < n_classes:
            raise ValueError(
                f"the {split} split would hold {size} of {n_total} examples, fewer than the "
                f"{n_classes} classes; use more data or change val_fraction/test_fraction"
            )
    counts = np.bincount(labels, minlength=n_classes)
    smallest = int(np.argmin(counts))
    if counts[smallest] < 3:
        raise ValueError(
            f"class {smallest} has only {counts[smallest]} example(s); every class needs at "
            "least 3 to appear in the train, val and test splits"
        )
    indices = np.arange(n_total)
    rest, test = train_test_split(
        indices, test_size=n_test, stratify=labels, random_state=split_seed
    )
    train, val = train_test_split(
        rest, test_size=n_val, stratify=labels[rest], random_state=split_seed
    )
    missing = np.setdiff1d(np.arange(n_classes), labels[train])
    if len(missing):
        raise ValueError(
            f"the train split would hold no example of class(es) {missing.tolist()}; "
            "lower val_fraction/test_fraction"
        )
    return train, val, test


def _standardise(
    x_train: np.ndarray, others: list[np.ndarray], per_feature: bool
) -> list[np.ndarray]:
    """Centre and scale every split with the train split's statistics."""
    if per_feature:
        mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
        scale[np.ptp(x_train, axis=0) == 0] = 1.0  # constant feature: centre only
    else:
        mean, scale = x_train.mean(), x_train.std()
        scale = scale if scale > 0 else 1.0
    return [(x - mean) / scale for x in [x_train, *others]]


def load_dataset(
    name: str,
    *,
    split_seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    **options: Any,
) -> Dataset:
    """Load dataset `name`, split it stratified by label and standardise it with train stats.

    `options` are dataset-specific (see `available_datasets()`; e.g. `data_seed` for the
    synthetic sets and mnist1d). `split_seed` only controls the split, not the data.
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    spec = _DATASETS[name]
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        accepted = ", ".join(sorted(spec.defaults)) or "none"
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; accepted: {accepted}"
        )
    split_seed = _check_int("split_seed", split_seed, 0)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )

    features, labels = spec.generate(**{**spec.defaults, **options})
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1

    splits = _stratified_split(labels, n_classes, split_seed, val_fraction, test_fraction)
    x_train, x_val, x_test = _standardise(
        features[splits[0]],
        [features[splits[1]], features[splits[2]]],
        per_feature=spec.image_shape is None,
    )
    input_shape = spec.image_shape or (features.shape[1],)

    def as_tensors(x: np.ndarray, split: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(x.astype(np.float32)).reshape(len(split), *input_shape)
        return x, torch.from_numpy(labels[split].copy())

    return Dataset(
        name,
        *as_tensors(x_train, splits[0]),
        *as_tensors(x_val, splits[1]),
        *as_tensors(x_test, splits[2]),
        n_classes=n_classes,
        input_shape=input_shape,
    )
