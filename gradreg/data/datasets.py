"""One concept, the registry of datasets by name and `load_dataset`, which loads one as a
`Dataset`: split (`gradreg.data.splits`), standardised with the training split's statistics,
and carrying the `InputTransform` that turns inputs in the dataset's own units into what the
network was trained on.

The names: sklearn's bundled sets, the generated ones (`gradreg.data.synthetic`), the image
files in their standard formats (`gradreg.data.standard_files`) and ``file``, the user's own
file (`gradreg.data.userfiles`). Besides names, a user's loader by entry point
``"package.module:function"`` (`gradreg.data.user_loaders`, which states its contract).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gradreg.data import standard_files, synthetic, user_loaders, userfiles
from gradreg.data.options import check_int
from gradreg.data.splits import (
    DEFAULT_VAL_FRACTION,
    Arrays,
    Splits,
    check_fraction,
    check_rarest_class,
    check_split_sizes,
    knobs,
    resolve_test_fraction,
    split_examples,
    split_sizes,
)
from gradreg.data.transform import InputTransform, standardise, unit_statistics
from gradreg.user_code import is_entry_point

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
    # class c's name: "0".."C-1" for the built-in sets, a file's label values or folder names,
    # a loader's class_names
    class_names: tuple[str, ...] = ()
    # where the data came from: {"name", "options"} for a built-in set; a file's path, format,
    # sha256 digest, n_examples, x_shape (all its examples), class_names (and label column); a
    # user loader's entry point, options, digest, … (gradreg.data.user_loaders)
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


# ---------------------------------------------------------------- sources


def _bundled(
    loader: str, description: str, image_shape: tuple[int, ...] | None = None
) -> _DatasetSpec:
    """One of sklearn's bundled sets (sklearn is imported when it loads: it costs about 2 s)."""

    def generate() -> Arrays:
        from sklearn import datasets as sk_datasets

        x, y = getattr(sk_datasets, loader)(return_X_y=True)
        return x, y

    return _DatasetSpec(description, generate, {}, image_shape=image_shape)


def _image_files(
    name: str, description: str, image_shape: tuple[int, ...], per_channel: bool = False
) -> _DatasetSpec:
    """An image dataset read from its standard files in the data directory, with its own
    official test set."""

    def generate(data_dir: str | os.PathLike[str] | None) -> tuple[np.ndarray, ...]:
        x_train, y_train, x_test, y_test = standard_files.load_official_splits(name, data_dir)
        return _unit_pixels(x_train), y_train, _unit_pixels(x_test), y_test

    return _DatasetSpec(
        description,
        generate,
        {"data_dir": None},
        image_shape=image_shape,
        official_test_split=True,
        per_channel=per_channel,
    )


def _unit_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 rows in [0, 1]."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    pixels /= 255
    return pixels


_DATASETS: dict[str, _DatasetSpec] = {
    "digits": _bundled(
        "load_digits",
        "sklearn handwritten digits: 1797 8x8 grey images, 10 classes",
        image_shape=(1, 8, 8),
    ),
    "iris": _bundled("load_iris", "sklearn iris: 150 flowers, 4 features, 3 classes"),
    "wine": _bundled("load_wine", "sklearn wine: 178 wines, 13 features, 3 classes"),
    "breast_cancer": _bundled(
        "load_breast_cancer", "sklearn breast cancer: 569 tumours, 30 features, 2 classes"
    ),
    "mnist1d": _DatasetSpec(
        "MNIST-1D generated locally: 5000 signals of length 40 (n_samples), 10 classes",
        synthetic.load_mnist1d,
        {"data_seed": 42, "n_samples": 5000},
        image_shape=(1, 40),
    ),
    "moons": _DatasetSpec(
        "synthetic two interleaving half-circles in 2D, 2 classes",
        synthetic.make_moons,
        {"n_samples": 1000, "noise": 0.2, "data_seed": 0},
    ),
    "blobs": _DatasetSpec(
        "synthetic isotropic Gaussian blobs, one per class",
        synthetic.make_blobs,
        {"n_samples": 1000, "n_classes": 3, "n_features": 2, "cluster_std": 1.0, "data_seed": 0},
    ),
    "mnist": _image_files(
        "mnist",
        "MNIST handwritten digits from IDX files in DATA_DIR/mnist: 60000 train + 10000 "
        "official test 28x28 grey images, 10 classes",
        image_shape=(1, 28, 28),
    ),
    "fashion_mnist": _image_files(
        "fashion_mnist",
        "Fashion-MNIST clothing from IDX files in DATA_DIR/fashion_mnist: 60000 train + "
        "10000 official test 28x28 grey images, 10 classes",
        image_shape=(1, 28, 28),
    ),
    "cifar10": _image_files(
        "cifar10",
        "CIFAR-10 from python batches in DATA_DIR/cifar10: 50000 train + 10000 official "
        "test 32x32 colour images, 10 classes",
        image_shape=(3, 32, 32),
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


def _assemble(
    name: str,
    splits: Splits,
    *,
    raw_shape: tuple[int, ...],
    input_shape: tuple[int, ...],
    mode: str,
    class_names: tuple[str, ...],
    source: dict[str, Any],
    standardised: bool = True,
) -> Dataset:
    """Standardise the splits (rows) with train statistics; the Dataset and its transform.
    Not ``standardised``: the rows as they are, and the identity transform."""
    n_channels = input_shape[0] if mode == "channel" else 1
    if standardised:
        (x_train, x_val, x_test), mean, scale = standardise(
            splits[0][0], [splits[1][0], splits[2][0]], mode, n_channels
        )
    else:
        x_train, x_val, x_test = (np.array(x) for x, _ in splits)  # copies: the caller's stay
        mean, scale = unit_statistics(mode, input_shape)
    dtype = str(splits[0][0].dtype)
    transform = InputTransform(raw_shape, input_shape, mode, mean, scale, dtype)

    def as_tensors(x: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.from_numpy(x.astype(np.float32, copy=False))
        return inputs.reshape(len(labels), *input_shape), torch.from_numpy(labels.astype(np.int64))

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
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float | None = None,
    **options: Any,
) -> Dataset:
    """Load dataset `name`, split it stratified by label and standardise it with train stats.

    `options` are dataset-specific (see `available_datasets()`; e.g. `data_seed` for the
    synthetic sets and mnist1d, `data_dir` for the image files, `path` for ``file``).
    `split_seed` only controls the split, not the data. Datasets with an official test split
    (mnist, fashion_mnist, cifar10, a .npz file with x_test and y_test) use it as the test set
    and carve validation from their train set; the others hold out `test_fraction` (None: 0.2)
    of their examples. A user's loader ``"package.module:function"`` is called with
    `options` (`gradreg.data.user_loaders`): its one pair (x, y) is split as a file's, its own
    test split (and validation split, if it gives one) is kept.
    """
    if is_entry_point(name):
        return _load_user(name, split_seed, val_fraction, test_fraction, options)
    if name == FILE_DATASET:
        return _load_file(split_seed, val_fraction, test_fraction, options)
    spec = _spec_for(name, options)
    split_seed = check_int("split_seed", split_seed, 0)
    val_fraction = check_fraction("val_fraction", val_fraction)
    owner = f"dataset {name!r} has an official test split"
    test_fraction = resolve_test_fraction(
        owner, spec.official_test_split, val_fraction, test_fraction
    )

    resolved = {**spec.defaults, **options}
    generated = spec.generate(**resolved)
    if test_fraction is None:
        x, y, x_test, y_test = generated
        n_classes = int(max(y.max(), y_test.max(initial=0))) + 1
        test: Arrays | None = (x_test, y_test)
    else:
        x, y = generated
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        y = np.asarray(y, dtype=np.int64)
        n_classes, test = int(y.max()) + 1, None
    splits = split_examples(x, y, n_classes, split_seed, val_fraction, test_fraction, test=test)
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
        return resolve_test_fraction(owner, stored.x_test is not None, val_fraction, test_fraction)
    except ValueError as error:
        raise FileDatasetError(str(error), "test_fraction") from None


def check_file_dataset(
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float | None = None,
    **options: Any,
) -> None:
    """Everything `load_dataset("file", ...)` would refuse about this file and these split
    settings, without splitting or keeping it (a sweep's submission check): raises
    `FileDatasetError` whose ``field`` names the option at fault, with the loader's words."""
    file = userfiles.file_options(options)
    stored = userfiles.read_file_dataset(file)
    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = _file_test_fraction(stored, val_fraction, test_fraction)
    sizes = split_sizes(len(stored.y), val_fraction, test_fraction)
    n_classes = len(stored.class_names)
    try:
        check_split_sizes(sizes, n_classes, knobs(test_fraction))
    except ValueError as error:
        raise FileDatasetError(str(error), "val_fraction") from None
    try:
        check_rarest_class(stored.y, n_classes, list(sizes), stored.class_names)
    except ValueError as error:
        raise FileDatasetError(str(error), "path") from None


def _load_file(
    split_seed: int, val_fraction: float, test_fraction: float | None, options: dict[str, Any]
) -> Dataset:
    file = userfiles.file_options(options)
    split_seed = check_int("split_seed", split_seed, 0)
    val_fraction = check_fraction("val_fraction", val_fraction)
    stored = userfiles.load_file_dataset(file)
    test_fraction = _file_test_fraction(stored, val_fraction, test_fraction)
    x, y, names = stored.x, stored.y, stored.class_names
    test = None
    if stored.x_test is not None and stored.y_test is not None:
        test = (stored.x_test, stored.y_test)
    parts = split_examples(
        x, y, len(names), split_seed, val_fraction, test_fraction, test=test, class_names=names
    )
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


# ---------------------------------------------------------------- the user's loaders


def _load_user(
    entry_point: str,
    split_seed: int,
    val_fraction: float,
    test_fraction: float | None,
    options: dict[str, Any],
) -> Dataset:
    split_seed = check_int("split_seed", split_seed, 0)
    val_fraction = check_fraction("val_fraction", val_fraction)
    data = user_loaders.load_user_data(entry_point, options)
    owner = f"data loader {entry_point!r} returns its own test split"
    own_test = data.x_test is not None
    test_fraction = resolve_test_fraction(owner, own_test, val_fraction, test_fraction)
    names = data.class_names
    if data.x_val is not None and data.y_val is not None:
        assert data.x_test is not None and data.y_test is not None
        parts = [(data.x, data.y), (data.x_val, data.y_val), (data.x_test, data.y_test)]
    else:
        test = None
        if data.x_test is not None and data.y_test is not None:
            test = (data.x_test, data.y_test)
        try:
            parts = split_examples(
                data.x,
                data.y,
                len(names),
                split_seed,
                val_fraction,
                test_fraction,
                test=test,
                class_names=names,
            )
        except ValueError as error:
            raise ValueError(f"data loader {entry_point!r}: {error}") from None
    # as a file's: features standardised in float64, signals and images per channel in float32
    dtype = np.float64 if data.x.ndim == 2 else np.float32
    splits = [
        (np.asarray(part, dtype=dtype).reshape(len(part), -1), labels) for part, labels in parts
    ]
    return _assemble(
        entry_point,
        splits,
        raw_shape=data.input_shape,
        input_shape=data.input_shape,
        mode="feature" if data.x.ndim == 2 else "channel",
        class_names=names,
        source=data.source,
        standardised=data.standardise,
    )
