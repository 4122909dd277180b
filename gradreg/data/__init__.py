"""Datasets, one concept a module:

- `datasets`: the registry of names, `load_dataset` and the `Dataset` it returns;
- `splits`: seeded stratified splits and their defaults (torch-free);
- `synthetic`: the sets generated in-process (moons, blobs, MNIST-1D and its cache);
- `standard_files`: the image datasets' file formats (IDX, CIFAR-10 batches) and layout;
- `downloader`: fetching those files, https only, pinned;
- `userfiles`: the user's own files and their checks;
- `transform`: how raw inputs become a network's;
- `options`: a dataset option's value checks.

The names below are the package's front door. They load on first use, so that the torch-free
modules (`gradreg.data.splits`) stay cheap to import for the sweep spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradreg.lazy import lazy_attributes

_EXPORTS = {
    "DEFAULT_VAL_FRACTION": "gradreg.data.splits",
    "FILE_DATASET": "gradreg.data.datasets",
    "Dataset": "gradreg.data.datasets",
    "FileDatasetError": "gradreg.data.userfiles",
    "available_datasets": "gradreg.data.datasets",
    "check_file_dataset": "gradreg.data.datasets",
    "dataset_options": "gradreg.data.datasets",
    "load_dataset": "gradreg.data.datasets",
}
__all__ = [
    "DEFAULT_VAL_FRACTION",
    "FILE_DATASET",
    "Dataset",
    "FileDatasetError",
    "available_datasets",
    "check_file_dataset",
    "dataset_options",
    "load_dataset",
]

if TYPE_CHECKING:
    from gradreg.data.datasets import (
        FILE_DATASET,
        Dataset,
        available_datasets,
        check_file_dataset,
        dataset_options,
        load_dataset,
    )
    from gradreg.data.splits import DEFAULT_VAL_FRACTION
    from gradreg.data.userfiles import FileDatasetError


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
