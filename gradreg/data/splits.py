"""Seeded train/val/test splits, stratified by label, and the checks that every split can train.

The split defaults live here (`DEFAULT_VAL_FRACTION`, `DEFAULT_TEST_FRACTION`) and nowhere
else: `TrainConfig`, the loaders, the sweep spec and the CLI read them. This module imports
no torch (sklearn only when it splits), so the sweep spec reads its defaults cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

DEFAULT_VAL_FRACTION = 0.15  # the share of examples (of the official train set) for validation
DEFAULT_TEST_FRACTION = 0.2  # the share held out for testing, where a dataset has no test set

Arrays = tuple[np.ndarray, np.ndarray]
Splits = list[Arrays]  # (x, y) of train, val and test


def check_fraction(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number in (0, 1), got {value!r}")
    fraction = float(value)
    if not 0 < fraction < 1:
        raise ValueError(f"{option} must be in (0, 1), got {value}")
    return fraction


def resolve_test_fraction(
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
        test_fraction = DEFAULT_TEST_FRACTION
    test_fraction = check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )
    return test_fraction


def split_sizes(n_total: int, val_fraction: float, test_fraction: float | None) -> dict[str, int]:
    """Examples per split; without a test fraction the test set is the dataset's own."""
    n_val = round(val_fraction * n_total)
    if test_fraction is None:
        return {"train": n_total - n_val, "val": n_val}
    n_test = round(test_fraction * n_total)
    return {"train": n_total - n_test - n_val, "val": n_val, "test": n_test}


def knobs(test_fraction: float | None) -> str:
    """The settings that decide the split sizes, as an error message names them."""
    return "val_fraction" if test_fraction is None else "val_fraction/test_fraction"


def check_split_sizes(sizes: dict[str, int], n_classes: int, knobs: str) -> None:
    n_total = sum(sizes.values())
    for split, size in sizes.items():
        if size < n_classes:
            raise ValueError(
                f"the {split} split would hold {size} of {n_total} examples, fewer than the "
                f"{n_classes} classes; use more data or change {knobs}"
            )


def check_rarest_class(
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


def stratified_split(
    labels: np.ndarray,
    n_classes: int,
    split_seed: int,
    val_fraction: float,
    test_fraction: float | None,
    class_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Indices of the train, val and test examples, stratified by label; with
    ``test_fraction`` None (a dataset with its own test set) of the train and val examples."""
    sizes = split_sizes(len(labels), val_fraction, test_fraction)
    check_split_sizes(sizes, n_classes, knobs(test_fraction))
    check_rarest_class(labels, n_classes, list(sizes), class_names)
    from sklearn.model_selection import train_test_split

    rest = np.arange(len(labels))
    held_out = []
    if test_fraction is not None:
        rest, test = train_test_split(
            rest, test_size=sizes["test"], stratify=labels, random_state=split_seed
        )
        held_out.append(test)
    train, val = train_test_split(
        rest, test_size=sizes["val"], stratify=labels[rest], random_state=split_seed
    )
    _check_train_has_every_class(labels[train], n_classes, knobs(test_fraction))
    return [train, val, *held_out]


def split_examples(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    split_seed: int,
    val_fraction: float,
    test_fraction: float | None,
    *,
    test: Arrays | None = None,
    class_names: Sequence[str] | None = None,
) -> Splits:
    """(x, y) of train, val and test (`stratified_split`); with ``test_fraction`` None the
    test set is ``test``, the dataset's own."""
    parts = [
        (x[i], y[i])
        for i in stratified_split(
            y, n_classes, split_seed, val_fraction, test_fraction, class_names
        )
    ]
    if test_fraction is None:
        if test is None:
            raise ValueError("test_fraction None needs the dataset's own test set")
        parts.append(test)
    return parts
