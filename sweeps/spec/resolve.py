"""From a checked spec to what one trial trains: its TrainConfig, its epochs, its data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradreg import settings as gradreg_settings
from gradreg.config import TrainConfig
from gradreg.data import FILE_DATASET
from gradreg.methods import get_method
from gradreg.names import default_goal
from sweeps.spec import CategoricalParameter, DatasetSection, IntParameter, SweepSpec


def resolve_data_dir(data_dir: str, data_root: Path | None) -> Path | None:
    """``data_dir`` as an absolute path inside ``data_root``, or None if it escapes it.

    Without a root, the path is taken as given (made absolute).
    """
    if data_root is None:
        return Path(data_dir).expanduser().absolute()
    root = data_root.resolve()
    candidate = (root / Path(data_dir).expanduser()).resolve()
    return candidate if candidate.is_relative_to(root) else None


def resolve_data_file(dataset: DatasetSection, data_root: Path | None) -> Path:
    """The file dataset's ``options.path`` as an absolute path: relative to ``data_dir`` if
    given, else to the data root, and inside the root (ValueError otherwise).

    Without a root, relative to ``data_dir`` or gradreg's data directory, unbounded. The
    submission check and the trial both call this, so they refuse with the same words.
    """
    path = dataset.options.get("path")
    if not isinstance(path, str):
        raise ValueError(f"dataset.options.path must be a string, got {path!r}")
    if data_root is None:
        base = Path(dataset.data_dir or gradreg_settings.data_dir()).expanduser()
        return (base / Path(path).expanduser()).absolute()
    root = data_root.resolve()
    base = root / Path(dataset.data_dir).expanduser() if dataset.data_dir else root
    candidate = (base / Path(path).expanduser()).resolve()
    if not candidate.is_relative_to(root):
        raise ValueError(
            f"dataset.options.path {path!r} resolves outside the data root {root} "
            "(GRADREG_DATA_DIR); give a path relative to it"
        )
    return candidate


def base_settings(spec: SweepSpec, data_root: Path | None) -> dict[str, Any]:
    """The TrainConfig settings that come from the dataset and model sections (a file
    dataset's path as written: `trial_config` resolves it, once, for the trial). A user's
    loader or builder is passed as its entry point, with its options as they are."""
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
        "dataset": spec.dataset.identifier,
        "dataset_options": options,
        "split_seed": spec.dataset.split_seed,
        "val_fraction": spec.dataset.val_fraction,
        "test_fraction": spec.dataset.test_fraction,
        "model": spec.model.identifier,
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
    data = base_settings(spec, data_root)
    if spec.dataset.name == FILE_DATASET:
        path = resolve_data_file(spec.dataset, data_root)
        data["dataset_options"]["path"] = str(path)
    return TrainConfig(**data, **settings)


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


def early_stopping_target(spec: SweepSpec) -> tuple[str, str] | None:
    """The metric early stopping ranks trials by and its goal (``minimize`` or ``maximize``);
    None when the sweep does not stop trials early."""
    stopping = spec.early_stopping
    if stopping.kind == "none":
        return None
    first = spec.objectives[0]
    metric = stopping.metric or first.metric
    goal = stopping.goal or (first.goal if metric == first.metric else default_goal(metric))
    return metric, str(goal)


def tune_metrics(spec: SweepSpec) -> frozenset[str]:
    """What Tune itself reads of a trial's reports: its searcher the objectives, its scheduler
    the early-stopping metric, and the driver the epoch (`sweeps.tune_results`)."""
    target = early_stopping_target(spec)
    stopping = {target[0]} if target else set()
    return frozenset({"epoch", *(o.metric for o in spec.objectives), *stopping})
