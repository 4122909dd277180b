"""A small digits sweep for trying the cluster: the tests' and the benchmark's."""

from __future__ import annotations

from typing import Any


def digits_sweep(
    name: str,
    *,
    trials: int = 4,
    concurrent: int = 4,
    gpu: float = 0.5,
    epochs: int = 6,
    hidden: tuple[int, ...] = (32,),
    retries: int = 1,
) -> dict[str, Any]:
    """VL with one σ on digits, searching the prior variance; a checkpoint every epoch."""
    return {
        "name": name,
        "dataset": {"name": "digits", "split_seed": 0},
        "model": {"name": "mlp", "options": {"hidden": list(hidden)}},
        "method": "vl-uniform",
        "fixed": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "noise_scale": 0.01},
        "parameters": {
            "prior_variance": {"type": "float", "low": 0.1, "high": 1.0, "scale": "log"}
        },
        "objectives": [{"metric": "val_nll", "goal": "minimize"}],
        "search": {"algorithm": "random", "seed": 0},
        "budget": {"max_trials": trials, "max_concurrent_trials": concurrent},
        "resources": {"cpu": 1, "gpu": gpu},
        "fault_tolerance": {"max_retries_per_trial": retries, "checkpoint_every_epochs": 1},
        "tracking": {"log_reliability_diagram": True},
    }
