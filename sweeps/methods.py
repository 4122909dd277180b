"""The sweep-level method names and which training settings each of them uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A sweep names the posterior with its method: VL's two variance families are two methods.
SPEC_METHODS: dict[str, dict[str, str]] = {
    "vl-uniform": {"method": "vl", "variance": "uniform"},
    "vl-diagonal": {"method": "vl", "variance": "diagonal"},
    "map": {"method": "map"},
    "mcvi": {"method": "mcvi"},
    "laplace": {"method": "laplace"},
}

# Settings every method uses; the names are the project-wide hyperparameter names.
COMMON_SETTINGS = (
    "prior_variance",
    "kl_weight",
    "lr",
    "epochs",
    "batch_size",
    "predict",
    "n_samples",
    "seed",
    "device",
    "bf16",
)
_OWN_SETTINGS: dict[str, tuple[str, ...]] = {
    "vl-uniform": ("noise_scale", "learn_noise_scale", "fisher", "empirical_fisher"),
    "vl-diagonal": ("init_variance", "variance_lr", "fisher", "empirical_fisher"),
    "map": (),
    "mcvi": ("init_variance", "variance_lr", "mc_samples"),
    "laplace": ("fisher", "empirical_fisher"),
}
# Every setting a sweep may fix or search (besides `method`).
HYPERPARAMETERS: tuple[str, ...] = COMMON_SETTINGS + tuple(
    dict.fromkeys(name for own in _OWN_SETTINGS.values() for name in own)
)
# What a method needs before it can train, with a hint of a sensible value.
REQUIRED_SETTINGS: dict[str, dict[str, str]] = {
    "vl-uniform": {"noise_scale": "σ of every weight, e.g. 0.01"},
}


def settings_used(method: str, learns_noise_scale: bool = False) -> tuple[str, ...]:
    """The settings ``method`` reads. A uniform variance has a learning rate only when learned."""
    if method not in SPEC_METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(SPEC_METHODS)}")
    own = _OWN_SETTINGS[method]
    if method == "vl-uniform" and learns_noise_scale:
        own = (*own, "variance_lr")
    return COMMON_SETTINGS + own


def train_settings(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig keyword arguments for ``method`` with ``values`` (only those it uses)."""
    learns = bool(values.get("learn_noise_scale", False))
    used = settings_used(method, learns)
    return {**SPEC_METHODS[method], **{k: v for k, v in values.items() if k in used}}
