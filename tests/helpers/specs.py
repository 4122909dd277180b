"""The small digits sweep the engine's and the service's tests start from."""

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
