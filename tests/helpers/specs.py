"""The small digits sweep the engine's and the service's tests start from; its IVON form, and
what a sweep's registered digits model must do."""

from __future__ import annotations

import copy
from typing import Any

from sweeps import SweepSpec, parse_spec

# A small, fast digits sweep: every test starts from this and changes what it studies.
DIGITS_SWEEP: dict[str, Any] = {
    "name": "digits-small",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [32]}},
    "method": "vl-uniform",
    "fixed": {"epochs": 2, "batch_size": 256, "lr": 0.003, "device": "cpu"},
    "parameters": {
        "noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
        "prior_variance": {"type": "float", "low": 0.1, "high": 10.0, "scale": "log"},
    },
    "objectives": [{"metric": "val_nll", "goal": "minimize"}],
    "search": {"algorithm": "tpe", "seed": 0, "n_startup_trials": 2},
    "budget": {"max_trials": 4, "max_concurrent_trials": 2},
    "resources": {"cpu": 1},
    "fault_tolerance": {"max_retries_per_trial": 0, "checkpoint_every_epochs": 1},
}


def digits_spec(**changes: Any) -> SweepSpec:
    """DIGITS_SWEEP with the given top-level sections replaced, validated."""
    return parse_spec({**copy.deepcopy(DIGITS_SWEEP), **changes})


def serial_digits_spec(name: str, epochs: int, trials: int, **changes: Any) -> SweepSpec:
    """DIGITS_SWEEP named ``name``: ``trials`` trials of ``epochs`` epochs, one at a time, with
    the given top-level sections replaced too."""
    return digits_spec(
        name=name,
        fixed={**DIGITS_SWEEP["fixed"], "epochs": epochs},
        budget={"max_trials": trials, "max_concurrent_trials": 1},
        **changes,
    )


# IVON's searched prior (issue 28); its lr is fixed at IVON's own step size, not Adam's.
IVON_PARAMETERS: dict[str, Any] = {
    "prior_variance": {"type": "float", "low": 0.1, "high": 10.0, "scale": "log"},
}
IVON_SWEEP: dict[str, Any] = {
    **DIGITS_SWEEP,
    "name": "digits-ivon",
    "method": "ivon",
    "fixed": {**DIGITS_SWEEP["fixed"], "lr": 0.1},
    "parameters": IVON_PARAMETERS,
    "budget": {"max_trials": 2, "max_concurrent_trials": 1},
}


def assert_registered_model_predicts(tracking_uri: str, model_uri: str) -> None:
    """The registered digits model loads with mlflow.pyfunc and gives 10 class probabilities
    per image, each row summing to 1."""
    import mlflow
    import numpy as np
    from sklearn.datasets import load_digits

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    images = load_digits().data[:16]
    probs = np.asarray(model.predict(images), dtype=float)
    assert probs.shape == (16, 10)
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert len(set(probs.argmax(axis=1))) > 1  # not one class for every image
