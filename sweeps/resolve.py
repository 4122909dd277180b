"""From a checked spec to what one trial trains: its TrainConfig, its epochs, its data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradreg.config import TrainConfig
from gradreg.methods import get_method
from sweeps.spec import CategoricalParameter, IntParameter, SweepSpec


def resolve_data_dir(data_dir: str, data_root: Path | None) -> Path | None:
    """``data_dir`` as an absolute path inside ``data_root``, or None if it escapes it.

    Without a root, the path is taken as given (made absolute).
    """
    if data_root is None:
        return Path(data_dir).expanduser().absolute()
    root = data_root.resolve()
    candidate = (root / Path(data_dir).expanduser()).resolve()
    return candidate if candidate == root or root in candidate.parents else None


def base_settings(spec: SweepSpec, data_root: Path | None) -> dict[str, Any]:
    """The TrainConfig settings that come from the dataset and model sections."""
    options = dict(spec.dataset.options)
    if spec.dataset.data_dir is not None:
        resolved = resolve_data_dir(spec.dataset.data_dir, data_root)
        if resolved is None:
            # Admission checked this; a root that changed since (a link, a remount) must not
            # open the user's raw path instead.
            raise ValueError(
                f"dataset.data_dir {spec.dataset.data_dir!r} resolves outside the data root "
                f"{data_root} (GRADREG_DATA_DIR); the trial refuses to read it"
            )
        options["data_dir"] = str(resolved)
    return {
        "dataset": spec.dataset.name,
        "dataset_options": options,
        "split_seed": spec.dataset.split_seed,
        "val_fraction": spec.dataset.val_fraction,
        "test_fraction": spec.dataset.test_fraction,
        "model": spec.model.name,
        "model_options": dict(spec.model.options),
    }


def trial_method(spec: SweepSpec, values: Mapping[str, Any]) -> str:
    method = values.get("method", spec.method)
    if method is None:
        raise ValueError("the trial's values name no method and the spec fixes none")
    return str(method)


def trial_config(
    spec: SweepSpec, values: Mapping[str, Any], data_root: Path | None = None
) -> TrainConfig:
    """The TrainConfig of one trial: the spec's sections, its fixed settings and ``values``
    (the searched values Tune gave the trial); ``data_root`` bounds ``dataset.data_dir``."""
    values = dict(values)
    method = get_method(trial_method(spec, values))
    values.pop("method", None)
    settings = method.train_settings({**spec.fixed, **values})
    return TrainConfig(**base_settings(spec, data_root), **settings)


def trial_epochs(spec: SweepSpec, values: Mapping[str, Any]) -> int:
    """How many epochs a trial with these searched ``values`` runs (a finished trial's)."""
    epochs = values.get("epochs", spec.fixed.get("epochs", TrainConfig.epochs))
    return int(epochs)


def max_epochs(spec: SweepSpec) -> int:
    """The most epochs any trial of the sweep runs."""
    parameter = spec.parameters.get("epochs")
    if isinstance(parameter, IntParameter):
        return parameter.high
    if isinstance(parameter, CategoricalParameter):
        return max(int(c) for c in parameter.choices if isinstance(c, int))
    value = spec.fixed.get("epochs", TrainConfig.epochs)
    return value if isinstance(value, int) else TrainConfig.epochs
