"""Classification datasets by name, with seeded stratified train/val/test splits.

Built-in sets (sklearn's, mnist1d, the image files of `gradreg.data.standard_files`) and ``file``, the
user's own file (`gradreg.data.userfiles`). Every `Dataset` carries the `InputTransform` that turns
inputs in the dataset's own units into what the network was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradreg import settings
from gradreg.data import standard_files
from gradreg.data import userfiles
from gradreg.data.transform import InputTransform, standardise

Arrays = tuple[np.ndarray, np.ndarray]
_DEFAULT_TEST_FRACTION = 0.2
FILE_DATASET = "file"
FileDatasetError = userfiles.FileDatasetError


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
    # raw inputs -> model inputs, with the train split's statistics (None: not known)
    transform: InputTransform | None = None
    # class c's name: "0".."C-1" for the built-in sets, a file's label values or folder names
    class_names: tuple[str, ...] = ()
    # where the data came from: {"name", "options"} for a built-in set; a file's path, format,
    # sha256 digest, n_examples, x_shape (all its examples), class_names (and label column)
    source: dict[str, Any] | None = field(default=None, compare=False, hash=False)

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
            "class_names": list(self.class_names),
            "source": self.source,
        }


@dataclass(frozen=True)
class _DatasetSpec:
    description: str
    # Returns one pool (features, labels) to split, or with `official_test_split`
    # (x_train, y_train, x_test, y_test).
    generate: Callable[..., tuple[np.ndarray, ...]]
    defaults: dict[str, Any]
    # Per-example shape for image-like data (standardised with one global mean/std unless
    # per_channel); None means tabular, standardised per feature.
    image_shape: tuple[int, ...] | None = None
    # The dataset brings its own test set; validation is carved from its train set.
    official_test_split: bool = False
    # Standardise each image channel (the first axis of image_shape) on its own.
    per_channel: bool = False

    @property
    def standardisation(self) -> str:
        if self.image_shape is None:
            return "feature"
        return "channel" if self.per_channel else "global"


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


# sklearn is imported where it is used: importing it costs about 2 s, and the sweep driver,
# which only checks specs, would pay that before every sweep's first trial.
def _sklearn_loader(name: str) -> Callable[..., Arrays]:
    def generate() -> Arrays:
        from sklearn import datasets as sk_datasets

        return getattr(sk_datasets, name)(return_X_y=True)

    return generate


def _make_moons(n_samples: int, noise: float, data_seed: int) -> Arrays:
    from sklearn import datasets as sk_datasets

    return sk_datasets.make_moons(
        n_samples=_check_int("n_samples", n_samples, 1),
        noise=_check_float("noise", noise, positive=False),
        random_state=_check_int("data_seed", data_seed, 0),
    )


def _make_blobs(
    n_samples: int, n_classes: int, n_features: int, cluster_std: float, data_seed: int
) -> Arrays:
    from sklearn import datasets as sk_datasets

    return sk_datasets.make_blobs(
        n_samples=_check_int("n_samples", n_samples, 1),
        centers=_check_int("n_classes", n_classes, 2),
        n_features=_check_int("n_features", n_features, 1),
        cluster_std=_check_float("cluster_std", cluster_std, positive=True),
        random_state=_check_int("data_seed", data_seed, 0),
    )


_MNIST1D_MEMO: dict[str, Arrays] = {}


def _cache_dir() -> Path:
    return settings.cache_dir()


def _mnist1d_args(data_seed: int, n_samples: int) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
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


def _load_mnist1d(data_seed: int, n_samples: int = 5000) -> Arrays:
    args = _mnist1d_args(
        _check_int("data_seed", data_seed, 0), _check_int("n_samples", n_samples, 50)
    )
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


def _image_files(name: str) -> Callable[..., tuple[np.ndarray, ...]]:
    def generate(data_dir: str | os.PathLike[str] | None) -> tuple[np.ndarray, ...]:
        x_train, y_train, x_test, y_test = standard_files.load_official_splits(name, data_dir)
        return _unit_pixels(x_train), y_train, _unit_pixels(x_test), y_test

    return generate


def _unit_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 rows in [0, 1]."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    pixels /= 255
    return pixels


_DATASETS: dict[str, _DatasetSpec] = {
    "digits": _DatasetSpec(
        "sklearn handwritten digits: 1797 8x8 grey images, 10 classes",
        _sklearn_loader("load_digits"),
        {},
        image_shape=(1, 8, 8),
    ),
    "iris": _DatasetSpec(
        "sklearn iris: 150 flowers, 4 features, 3 classes",
        _sklearn_loader("load_iris"),
        {},
    ),
    "wine": _DatasetSpec(
        "sklearn wine: 178 wines, 13 features, 3 classes",
        _sklearn_loader("load_wine"),
        {},
    ),
    "breast_cancer": _DatasetSpec(
        "sklearn breast cancer: 569 tumours, 30 features, 2 classes",
        _sklearn_loader("load_breast_cancer"),
        {},
    ),
    "mnist1d": _DatasetSpec(
        "MNIST-1D generated locally: 5000 signals of length 40 (n_samples), 10 classes",
        _load_mnist1d,
        {"data_seed": 42, "n_samples": 5000},
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
    "mnist": _DatasetSpec(
        "MNIST handwritten digits from IDX files in DATA_DIR/mnist: 60000 train + 10000 "
        "official test 28x28 grey images, 10 classes",
        _image_files("mnist"),
        {"data_dir": None},
        image_shape=(1, 28, 28),
        official_test_split=True,
    ),
    "fashion_mnist": _DatasetSpec(
        "Fashion-MNIST clothing from IDX files in DATA_DIR/fashion_mnist: 60000 train + "
        "10000 official test 28x28 grey images, 10 classes",
        _image_files("fashion_mnist"),
        {"data_dir": None},
        image_shape=(1, 28, 28),
        official_test_split=True,
    ),
    "cifar10": _DatasetSpec(
        "CIFAR-10 from python batches in DATA_DIR/cifar10: 50000 train + 10000 official "
        "test 32x32 colour images, 10 classes",
        _image_files("cifar10"),
        {"data_dir": None},
        image_shape=(3, 32, 32),
        official_test_split=True,
        per_channel=True,
    ),
}


def available_datasets() -> dict[str, str]:
    """Dataset names mapped to a one-line description."""
    return {
        **{name: spec.description for name, spec in _DATASETS.items()},
        FILE_DATASET: _FILE_DESCRIPTION,
    }


_FILE_DESCRIPTION = (
    "your own file (option path, relative to DATA_DIR): .npz with x and y (and x_test, y_test), "
    ".csv or .parquet with a label column (option label), or a folder of class folders of "
    "images; format from the suffix, or option format"
)


def dataset_options(name: str) -> dict[str, Any]:
    """The options dataset `name` accepts (besides the split settings), with their defaults."""
    if name == FILE_DATASET:
        return dict(userfiles.OPTIONS)
    return dict(_spec_for(name, {}).defaults)


# ---------------------------------------------------------------- splitting


def _check_fraction(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number in (0, 1), got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"{option} must be in (0, 1), got {value}")
    return float(value)


def _check_split_sizes(sizes: dict[str, int], n_classes: int, knobs: str) -> None:
    n_total = sum(sizes.values())
    for split, size in sizes.items():
        if size < n_classes:
            raise ValueError(
                f"the {split} split would hold {size} of {n_total} examples, fewer than the "
                f"{n_classes} classes; use more data or change {knobs}"
            )


def _check_rarest_class(
    labels: np.ndarray,
    n_classes: int,
    splits: list[str],
    class_names: Sequence[str] | None = None,
) -> None:
    counts = np.bincount(labels, minlength=n_classes)
    smallest = int(np.argmin(counts))
    if counts[smallest] < len(splits):
        name = class_names[smallest] if class_names else str(smallest)
        named = f" ({name!r})" if name != str(smallest) else ""
        raise ValueError(
            f"class {smallest}{named} has only {counts[smallest]} example(s); every class needs "
            f"at least {len(splits)} to appear in the {', '.join(splits[:-1])} and {splits[-1]} "
            "splits"
        )


def _check_train_has_every_class(train_labels: np.ndarray, n_classes: int, knobs: str) -> None:
    missing = np.setdiff1d(np.arange(n_classes), train_labels)
    if len(missing):
        raise ValueError(
            f"the train split would hold no example of class(es) {missing.tolist()}; lower {knobs}"
        )


_POOL_KNOBS = "val_fraction/test_fraction"
_OFFICIAL_KNOBS = "val_fraction"


def _split_sizes(n_total: int, val_fraction: float, test_fraction: float | None) -> dict[str, int]:
    """Examples per split; without a test fraction the test set is the dataset's own."""
    n_val = round(val_fraction * n_total)
    if test_fraction is None:
        return {"train": n_total - n_val, "val": n_val}
    n_test = round(test_fraction * n_total)
    return {"train": n_total - n_test - n_val, "val": n_val, "test": n_test}


def _stratified_split(
    labels: np.ndarray,
    n_classes: int,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test examples, stratified by label."""
    sizes = _split_sizes(len(labels), val_fraction, test_fraction)
    _check_split_sizes(sizes, n_classes, _POOL_KNOBS)
    _check_rarest_class(labels, n_classes, list(sizes), class_names)
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=sizes["test"], stratify=labels, random_state=split_seed
    )
    train, val = train_test_split(
        rest, test_size=sizes["val"], stratify=labels[rest], random_state=split_seed
    )
    _check_train_has_every_class(labels[train], n_classes, _POOL_KNOBS)
    return train, val, test


def _carve_validation(
    labels: np.ndarray,
    n_classes: int,
    split_seed: int,
    val_fraction: float,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and val examples within an official train set, stratified by label."""
    sizes = _split_sizes(len(labels), val_fraction, None)
    _check_split_sizes(sizes, n_classes, _OFFICIAL_KNOBS)
    _check_rarest_class(labels, n_classes, list(sizes), class_names)
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(
        np.arange(len(labels)), test_size=sizes["val"], stratify=labels, random_state=split_seed
    )
    _check_train_has_every_class(labels[train], n_classes, _OFFICIAL_KNOBS)
    return train, val


Splits = list[Arrays]  # (x, y) of train, val, test; x as rows (N, features)


def _split_pool(
    features: np.ndarray,
    labels: np.ndarray,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
) -> Splits:
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    indices = _stratified_split(labels, n_classes, split_seed, val_fraction, test_fraction)
    return [(features[split], labels[split]) for split in indices]


def _split_official(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    split_seed: int,
    val_fraction: float,
) -> Splits:
    n_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    train, val = _carve_validation(y_train, n_classes, split_seed, val_fraction)
    return [(x_train[train], y_train[train]), (x_train[val], y_train[val]), (x_test, y_test)]


def _spec_for(name: str, options: dict[str, Any]) -> _DatasetSpec:
    if name not in _DATASETS:
        accepted = ", ".join(sorted(available_datasets()))
        raise ValueError(f"unknown dataset {name!r}; available: {accepted}")
    spec = _DATASETS[name]
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        accepted = ", ".join(sorted(spec.defaults)) or "none"
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; accepted: {accepted}"
        )
    return spec


def _resolve_test_fraction(
    owner: str, official: bool, val_fraction: float, test_fraction: float | None
) -> float | None:
    """The test fraction to split off, or None when the dataset brings its own test set
    (``owner`` says whose it is, e.g. "dataset 'mnist' has an official test split")."""
    if official:
        if test_fraction is not None:
            raise ValueError(
                f"{owner}, which is used as the test set; leave test_fraction unset (got "
                f"{test_fraction})"
            )
        return None
    if test_fraction is None:
        test_fraction = _DEFAULT_TEST_FRACTION
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )
    return test_fraction


def _assemble(
    name: str,
    splits: Splits,
    *,
    raw_shape: tuple[int, ...],
    input_shape: tuple[int, ...],
    mode: str,
    class_names: tuple[str, ...],
    source: dict[str, Any],
) -> Dataset:
    """Standardise the splits (rows) with train statistics; the Dataset and its transform."""
    n_channels = input_shape[0] if mode == "channel" else 1
    (x_train, x_val, x_test), mean, scale = standardise(
        splits[0][0], [splits[1][0], splits[2][0]], mode, n_channels
    )
    dtype = str(splits[0][0].dtype)
    transform = InputTransform(raw_shape, input_shape, mode, mean, scale, dtype)

    def as_tensors(x: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(x.astype(np.float32, copy=False)).reshape(len(labels), *input_shape)
        return x, torch.from_numpy(labels.astype(np.int64))

    return Dataset(
        name,
        *as_tensors(x_train, splits[0][1]),
        *as_tensors(x_val, splits[1][1]),
        *as_tensors(x_test, splits[2][1]),
        n_classes=len(class_names),
        input_shape=input_shape,
        transform=transform,
        class_names=class_names,
        source=source,
    )


def load_dataset(
    name: str,
    *,
    split_seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float | None = None,
    **options: Any,
) -> Dataset:
    """Load dataset `name`, split it stratified by label and standardise it with train stats.

    `options` are dataset-specific (see `available_datasets()`; e.g. `data_seed` for the
    synthetic sets and mnist1d, `data_dir` for the image files, `path` for ``file``).
    `split_seed` only controls the split, not the data. Datasets with an official test split
    (mnist, fashion_mnist, cifar10, a .npz file with x_test and y_test) use it as the test set
    and carve validation from their train set; the others hold out `test_fraction` (None: 0.2)
    of their examples.
    """
    if name == FILE_DATASET:
        return _load_file(split_seed, val_fraction, test_fraction, options)
    spec = _spec_for(name, options)
    split_seed = _check_int("split_seed", split_seed, 0)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    owner = f"dataset {name!r} has an official test split"
    test_fraction = _resolve_test_fraction(
        owner, spec.official_test_split, val_fraction, test_fraction
    )

    resolved = {**spec.defaults, **options}
    generated = spec.generate(**resolved)
    if test_fraction is None:
        splits = _split_official(*generated, split_seed, val_fraction)
    else:
        splits = _split_pool(*generated, split_seed, val_fraction, test_fraction)
    input_shape = spec.image_shape or (splits[0][0].shape[1],)
    # raw inputs: one grey channel goes without its axis, as sklearn's and the IDX files' do
    raw_shape = input_shape[1:] if spec.image_shape and input_shape[0] == 1 else input_shape
    n_classes = int(max(labels.max(initial=0) for _, labels in splits)) + 1
    return _assemble(
        name,
        splits,
        raw_shape=raw_shape,
        input_shape=input_shape,
        mode=spec.standardisation,
        class_names=tuple(str(c) for c in range(n_classes)),
        source={"name": name, "options": {k: _plain(v) for k, v in resolved.items()}},
    )


def _plain(value: Any) -> Any:
    """An option value as JSON can hold it (paths as text)."""
    return str(value) if isinstance(value, os.PathLike) else value


# ---------------------------------------------------------------- the user's files


def _file_test_fraction(
    stored: userfiles.FileData, val_fraction: float, test_fraction: float | None
) -> float | None:
    owner = f"{stored.source['path']} holds x_test and y_test, its own test split"
    try:
        return _resolve_test_fraction(owner, stored.x_test is not None, val_fraction, test_fraction)
    except ValueError as error:
        raise FileDatasetError(str(error), "test_fraction") from None


def check_file_dataset(
    *, val_fraction: float = 0.15, test_fraction: float | None = None, **options: Any
) -> None:
    """Everything `load_dataset("file", ...)` would refuse about this file and these split
    settings, without splitting or keeping it (a sweep's submission check): raises
    `FileDatasetError` whose ``field`` names the option at fault, with the loader's words."""
    file = userfiles.file_options(options)
    stored = userfiles.read_file_dataset(file)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _file_test_fraction(stored, val_fraction, test_fraction)
    sizes = _split_sizes(len(stored.y), val_fraction, test_fraction)
    n_classes = len(stored.class_names)
    knobs = _OFFICIAL_KNOBS if test_fraction is None else _POOL_KNOBS
    try:
        _check_split_sizes(sizes, n_classes, knobs)
    except ValueError as error:
        raise FileDatasetError(str(error), "val_fraction") from None
    try:
        _check_rarest_class(stored.y, n_classes, list(sizes), stored.class_names)
    except ValueError as error:
        raise FileDatasetError(str(error), "path") from None


def _load_file(
    split_seed: int, val_fraction: float, test_fraction: float | None, options: dict[str, Any]
) -> Dataset:
    file = userfiles.file_options(options)
    split_seed = _check_int("split_seed", split_seed, 0)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    stored = userfiles.load_file_dataset(file)
    test_fraction = _file_test_fraction(stored, val_fraction, test_fraction)
    x, y, names = stored.x, stored.y, stored.class_names
    if test_fraction is None:
        assert stored.x_test is not None and stored.y_test is not None
        train, val = _carve_validation(y, len(names), split_seed, val_fraction, names)
        parts = [(x[train], y[train]), (x[val], y[val]), (stored.x_test, stored.y_test)]
    else:
        indices = _stratified_split(y, len(names), split_seed, val_fraction, test_fraction, names)
        parts = [(x[split], y[split]) for split in indices]
    # tables standardised per feature in float64, images per channel in float32 (as cifar10)
    dtype = np.float32 if stored.is_image else np.float64
    splits = [
        (np.asarray(part, dtype=dtype).reshape(len(part), -1), labels) for part, labels in parts
    ]
    raw_shape = tuple(x.shape[1:])
    return _assemble(
        FILE_DATASET,
        splits,
        raw_shape=raw_shape,
        input_shape=(1, *raw_shape) if x.ndim == 3 else raw_shape,
        mode="channel" if stored.is_image else "feature",
        class_names=names,
        source=dict(stored.source),
    )
