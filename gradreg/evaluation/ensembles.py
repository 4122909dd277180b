"""Ensembles of predictive distributions: equal-weight averages and greedy selection.

Members are models that predicted the same examples (the same validation and test split):
seeds of one configuration (a deep ensemble) or a sweep's trials (a hyper ensemble, Wenzel et
al. 2020). The ensemble's predictive is the average of the members' class probabilities.
`greedy_selection` is Caruana et al.'s (2004): start empty and repeatedly add, with
replacement, the member that most lowers the validation NLL of the average. Test data are
never used to choose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradreg.evaluation.calibration import (
    TemperatureFit,
    fit_temperature,
    temperature_scaled_metrics,
)
from gradreg.evaluation.metrics import ReliabilityBins, classification_metrics, reliability_bins

_TINY = 1e-300  # log of an average probability that underflowed to 0


@dataclass
class EnsembleResult:
    members: list[int]  # indices into the candidates, with repeats for greedy selection
    # {val,test}_{metric}, their _ts variants, val_temperature, val_temperature_fitted
    metrics: dict[str, float]
    test_bins: ReliabilityBins
    probs: dict[str, Tensor]  # the ensemble's predictive per split
    temperature: TemperatureFit  # T fitted on val, or T = 1 and why not


def average(probs: Sequence[Tensor], members: Sequence[int] | None = None) -> Tensor:
    """The mean of ``probs[i]`` over ``members`` (all of them by default), in float64."""
    chosen = range(len(probs)) if members is None else members
    if not chosen:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(probs[i].shape) for i in chosen}
    if len(shapes) != 1:
        raise ValueError(f"members predicted different shapes {sorted(shapes)}: not one split")
    return torch.stack([probs[i].double() for i in chosen]).mean(0)


def _nll(probs: Tensor, labels: Tensor) -> float:
    return float(-probs.gather(1, labels[:, None]).clamp_min(_TINY).log().mean())


def greedy_selection(val_probs: Sequence[Tensor], val_labels: Tensor, size: int) -> list[int]:
    """``size`` picks (with replacement) that greedily minimise the average's validation NLL;
    ties go to the earlier candidate."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    candidates = [p.double() for p in val_probs]
    chosen: list[int] = []
    total = torch.zeros_like(candidates[0])
    for _ in range(size):
        scores = [_nll((total + p) / (len(chosen) + 1), val_labels) for p in candidates]
        best = min(range(len(scores)), key=scores.__getitem__)
        chosen.append(best)
        total = total + candidates[best]
    return chosen


def evaluate_ensemble(
    probs: Mapping[str, Sequence[Tensor]], labels: Mapping[str, Tensor], members: Sequence[int]
) -> EnsembleResult:
    """The ensemble of ``members`` on every split: raw metrics, temperature-scaled ones (T
    fitted on ``val``, or T = 1 where the validation data do not determine one) and the test
    split's reliability bins."""
    averaged = {split: average(probs[split], members) for split in probs}
    metrics: dict[str, float] = {}
    for split, p in averaged.items():
        metrics.update(classification_metrics(p, labels[split], f"{split}_"))
    log = {s: (p.clamp_min(_TINY).log(), labels[s]) for s, p in averaged.items()}
    others = {f"{s}_": log[s] for s in log if s != "val"}
    temperature = fit_temperature(*log["val"])
    metrics.update(temperature_scaled_metrics(log["val"], others, temperature))
    return EnsembleResult(
        members=list(members),
        metrics=metrics,
        test_bins=reliability_bins(averaged["test"], labels["test"]),
        probs=averaged,
        temperature=temperature,
    )
