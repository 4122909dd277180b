"""The metric names used everywhere (CLI, Tune reports, MLflow, the API) and their direction.

Torch-free, so the sweep records and the API read them cheaply.
"""

from __future__ import annotations

from typing import Literal

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "nll", "ece", "aece", "brier")
SPLITS: tuple[str, ...] = ("val", "test")
# Suffixes of the variants reported beside a method's own predictive.
TEMPERATURE_SCALED = "_ts"  # after temperature scaling fitted on val
AT_MEAN = "_at_mean"  # the network at the posterior mean
# The temperature scaling's own numbers: T, and whether it was fitted (1.0) or left at T = 1
# because the validation data do not determine one (0.0; gradreg/evaluation/calibration.py says
# when).
TEMPERATURE_METRICS: tuple[str, ...] = ("val_temperature", "val_temperature_fitted")


def split_metrics(suffix: str = "") -> tuple[str, ...]:
    """``{val,test}_{accuracy,nll,ece,aece,brier}{suffix}``."""
    return tuple(f"{s}_{m}{suffix}" for s in SPLITS for m in CLASSIFICATION_METRICS)


# What every epoch reports, in this order (a Laplace run's last epoch adds posterior_* values).
EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_nll",
    "train_sqgrad",
    "train_kl",
    *split_metrics(),
    *TEMPERATURE_METRICS,
    *split_metrics(TEMPERATURE_SCALED),
    *split_metrics(AT_MEAN),
    "posterior_std_mean",
    "train_seconds",
)
Goal = Literal["minimize", "maximize"]
# What a sweep optimises when its spec names no objective (minimised: see `default_goal`).
DEFAULT_OBJECTIVE = "val_nll"


def higher_is_better(metric: str) -> bool:
    """Accuracy (under any prefix or suffix: ``val_accuracy``, ``test_accuracy_ts``) goes up;
    every other metric here is a loss or a calibration error and goes down."""
    return "accuracy" in metric.split("_")


def default_goal(metric: str) -> Goal:
    return "maximize" if higher_is_better(metric) else "minimize"
