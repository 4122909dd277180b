"""The metric names used everywhere (CLI, Tune reports, MLflow, the API) and their direction.

Torch-free, so the sweep records and the API read them cheaply.
"""

from __future__ import annotations

from typing import Literal

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "nll", "ece", "aece", "brier")
# What every epoch reports, in this order.
EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_nll",
    "train_sqgrad",
    "train_kl",
    *(f"{split}_{name}" for split in ("val", "test") for name in CLASSIFICATION_METRICS),
    "posterior_std_mean",
    "train_seconds",
)
Goal = Literal["minimize", "maximize"]


def higher_is_better(metric: str) -> bool:
    """Accuracy (under any prefix or suffix: ``val_accuracy``, ``test_accuracy_ts``) goes up;
    every other metric here is a loss or a calibration error and goes down."""
    return "accuracy" in metric.split("_")


def default_goal(metric: str) -> Goal:
    return "maximize" if higher_is_better(metric) else "minimize"
