"""A method comparison run in parts, joined seed by seed; and each method's training cost.

A comparison's files (`report.write_comparison`) can be read back (`load`) and joined to a
later run of some of its methods, or of a new one, in another folder: both have the same
setting and seeds, so their rows pair seed by seed (`paired`). The later run may rerun a
method the stored one has (MAP, say) to show that the stored rows are reproduced
(`reproduction`: every seed's validation and test numbers and the chosen hyperparameters,
compared exactly, with the largest difference where they differ).

Cost (`time_methods`): every method's chosen configuration trained a few epochs in one
process with one torch thread, one after the other, so that their seconds per epoch are
measured alike; `cost_rows` sets them against MAP's, with the epochs each method's early
stopping chose.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradreg.comparison.runs import CompareSpec, mean_and_se
from gradreg.methods import get_method
from gradreg.names import higher_is_better

VARIANTS = {"raw": "", "ts": "_ts"}
# The spec's fields that may differ between parts of one comparison (lr: a part written
# before methods had their own lr gives the shared one; `method_lr` compares what each ran).
PART_FIELDS = ("methods", "ensemble_of", "overrides", "lr")
# The spec's fields a timing pass does not take from the stored spec.
NOT_TIMED = ("search", "search_budget", "early_stopping", "ensemble", "hyper_ensemble")


@dataclass(frozen=True)
class StoredComparison:
    """What `report.write_comparison` wrote to one folder, read back."""

    folder: Path
    spec: dict[str, Any]
    chosen: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]]

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r["label"] for r in self.runs))


def load(folder: str | Path) -> StoredComparison:
    """The comparison in ``folder`` (its ``comparison.json``)."""
    path = Path(folder) / "comparison.json"
    if not path.is_file():
        raise FileNotFoundError(f"no comparison in {folder}: {path} does not exist")
    document = json.loads(path.read_text())
    missing = [k for k in ("spec", "chosen_hyperparameters", "runs") if k not in document]
    if missing:
        raise ValueError(f"{path} is not a comparison's file: it lacks {', '.join(missing)}")
    return StoredComparison(
        Path(folder), document["spec"], document["chosen_hyperparameters"], document["runs"]
    )


def require_same_setting(first: StoredComparison, second: StoredComparison) -> None:
    """Raise ValueError naming every setting field on which the two parts differ."""
    keys = sorted((set(first.spec) | set(second.spec)) - set(PART_FIELDS))
    differ = [k for k in keys if first.spec.get(k) != second.spec.get(k)]
    details = [f"{k}: {first.spec.get(k)!r} against {second.spec.get(k)!r}" for k in differ]
    for method in (m for m in first.spec["methods"] if m in second.spec["methods"]):
        if method_lr(first.spec, method) != method_lr(second.spec, method):
            details.append(
                f"{method}'s lr: {method_lr(first.spec, method)!r} against "
                f"{method_lr(second.spec, method)!r}"
            )
    if details:
        raise ValueError(
            f"{first.folder} and {second.folder} are not the same setting ({'; '.join(details)})"
        )


def method_lr(spec: dict[str, Any], method: str) -> float:
    """The lr ``method`` trained with in a stored spec (as `CompareSpec.lr_of`, overrides
    first)."""
    given = spec.get("overrides", {}).get(method, {}).get("lr")
    if given is not None:
        return float(given)
    return float(spec["lr"]) if spec.get("lr") is not None else get_method(method).default_lr


# ---------------------------------------------------------------- reproduction


@dataclass(frozen=True)
class Agreement:
    """How a rerun's rows of one label compare with the stored ones."""

    label: str
    seeds: int
    values: int  # numbers compared
    differing: int  # of which not exactly equal
    scaled_differing: int  # of those, temperature-scaled numbers or the temperature itself
    max_abs_diff: float
    worst: str  # the key with the largest difference ("" when none differs)
    chosen_equal: bool | None  # the chosen hyperparameters; None for an ensemble's row

    @property
    def exact(self) -> bool:
        return self.differing == 0 and self.chosen_equal is not False

    def describe(self) -> str:
        chosen = {None: "", True: ", same choice", False: ", a different choice"}
        if self.differing == 0:
            return (
                f"{self.label}: all {self.values} numbers of {self.seeds} seeds equal"
                f"{chosen[self.chosen_equal]}"
            )
        which = (
            "all of them temperature-scaled numbers or T, every raw number equal"
            if self.scaled_differing == self.differing
            else f"{self.differing - self.scaled_differing} of them raw numbers"
        )
        return (
            f"{self.label}: {self.differing} of {self.values} numbers of {self.seeds} seeds "
            f"differ ({which}), at most {self.max_abs_diff:.3g} ({self.worst})"
            f"{chosen[self.chosen_equal]}"
        )


def reproduction(stored: StoredComparison, rerun: StoredComparison) -> list[Agreement]:
    """Every label both hold, seed by seed: its validation and test numbers, its epochs and
    hyperparameters, and (for a method) the search's choice."""
    require_same_setting(stored, rerun)
    found = []
    for label in (lbl for lbl in rerun.labels if lbl in stored.labels):
        old = {r["seed"]: r for r in stored.runs if r["label"] == label}
        new = {r["seed"]: r for r in rerun.runs if r["label"] == label}
        if set(old) != set(new):
            raise ValueError(
                f"{label}: the stored run has seeds {sorted(old)}, the rerun {sorted(new)}"
            )
        values = differing = scaled = 0
        largest, worst = 0.0, ""
        for seed in sorted(old):
            for key in _compared_keys(old[seed]):
                a, b = old[seed][key], new[seed].get(key)
                values += 1
                if a == b:
                    continue
                differing += 1
                scaled += key.endswith("_ts") or "temperature" in key
                gap = _gap(a, b)
                if gap >= largest:
                    largest, worst = gap, f"seed {seed} {key}"
        chosen = None
        if label in stored.chosen or label in rerun.chosen:
            chosen = stored.chosen.get(label) == rerun.chosen.get(label)
        found.append(Agreement(label, len(old), values, differing, scaled, largest, worst, chosen))
    return found


def _compared_keys(run: dict[str, Any]) -> list[str]:
    """A run's numbers that do not depend on time: its metrics, epochs and settings."""
    return [
        k
        for k in run
        if k.startswith(("val_", "test_"))
        or k in ("epochs", "prior_variance", "lr", "kl_weight", "noise_scale", "variance_lr")
    ]


def _gap(a: Any, b: Any) -> float:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b))
    return math.inf  # one missing, or not numbers


# ---------------------------------------------------------------- pairing across parts


def lookup(parts: Sequence[StoredComparison]) -> dict[tuple[str, int], dict[str, Any]]:
    """(label, seed) → run, from the parts in order: the first part holding a label wins."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for part in parts:
        for run in part.runs:
            found.setdefault((run["label"], int(run["seed"])), run)
    return found


def paired(
    runs: dict[tuple[str, int], dict[str, Any]],
    first: tuple[str, str],
    second: tuple[str, str],
    seeds: int,
    metrics: Sequence[str] = ("nll", "ece", "accuracy"),
) -> list[dict[str, Any]]:
    """``first`` minus ``second`` ((label, variant): variant ``raw`` or ``ts``) on the test
    split, seed by seed; one row per metric, with the seeds on which ``first`` was better."""
    for label, variant in (first, second):
        if variant not in VARIANTS:
            raise ValueError(f"variant of {label!r} must be raw or ts, got {variant!r}")
        missing = [s for s in range(seeds) if (label, s) not in runs]
        if missing:
            raise KeyError(f"no run of {label!r} for seed(s) {missing}")
    rows = []
    for metric in metrics:
        diffs = [
            runs[(first[0], s)][f"test_{metric}{VARIANTS[first[1]]}"]
            - runs[(second[0], s)][f"test_{metric}{VARIANTS[second[1]]}"]
            for s in range(seeds)
        ]
        better = [d > 0 if higher_is_better(metric) else d < 0 for d in diffs]
        mean, se = mean_and_se(diffs)
        rows.append(
            {
                "first": first[0],
                "first_variant": first[1],
                "second": second[0],
                "second_variant": second[1],
                "metric": metric,
                "diff_mean": mean,
                "diff_se": se,
                "first_better": sum(better),
                "seeds": seeds,
            }
        )
    return rows


# ---------------------------------------------------------------- cost


def time_methods(
    spec: CompareSpec,
    chosen: dict[str, dict[str, Any]],
    epochs: int = 4,
    tick: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Each method's chosen configuration (seed 0) trained ``epochs`` epochs with one torch
    thread, one method after the other; its seconds per epoch are the median of its epochs'
    training time after the first (a warm-up). Evaluation is not timed."""
    import torch

    from gradreg.train import fit

    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first is a warm-up), got {epochs!r}")
    missing = [m for m in spec.methods if m not in chosen]
    if missing:
        raise ValueError(f"no chosen configuration for method(s) {', '.join(missing)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for method in spec.methods:
            point = {k: v for k, v in chosen[method].items() if k != "epochs"}
            result = fit(spec.config(method, seed=0, **point, epochs=epochs))
            seconds = [h["train_seconds"] for h in result.history[1:]]
            rows.append(
                {
                    "method": method,
                    "seconds_per_epoch": statistics.median(seconds),
                    "epochs_timed": len(seconds),
                }
            )
            tick(f"timed {method}")
        return rows
    finally:
        torch.set_num_threads(threads)


def timing_spec(parts: Sequence[StoredComparison]) -> tuple[CompareSpec, dict[str, Any]]:
    """The spec and choices a timing pass of every method the parts hold runs with."""
    for other in parts[1:]:
        require_same_setting(parts[0], other)
    methods: list[str] = []
    chosen: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for part in parts:
        for method in part.spec["methods"]:
            if method not in methods:
                methods.append(method)
                chosen[method] = part.chosen[method]
                given = part.spec.get("overrides", {}).get(method, {})
                overrides[method] = {**given, "lr": method_lr(part.spec, method)}
    values = {k: v for k, v in parts[0].spec.items() if k not in (*PART_FIELDS, *NOT_TIMED)}
    return CompareSpec(**values, methods=methods, overrides=overrides), chosen


def cost_rows(
    timings: Sequence[dict[str, Any]], runs: dict[tuple[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per method: its seconds per epoch and against MAP's, the epochs its early stopping
    chose (its runs' epochs, the same for every seed) and the training time to that epoch,
    also against MAP's."""
    by_method = {t["method"]: t for t in timings}
    if "map" not in by_method:
        raise ValueError("the timings have no map row to set the others against")

    def chosen_epochs(method: str) -> int:
        epochs = {int(r["epochs"]) for (label, _), r in runs.items() if label == method}
        if len(epochs) != 1:
            raise ValueError(f"{method}: expected one epoch count over seeds, got {epochs}")
        return epochs.pop()

    base = by_method["map"]["seconds_per_epoch"]
    base_total = base * chosen_epochs("map")
    rows = []
    for method, timing in by_method.items():
        seconds, epochs = timing["seconds_per_epoch"], chosen_epochs(method)
        rows.append(
            {
                "method": method,
                "seconds_per_epoch": seconds,
                "per_epoch_vs_map": seconds / base,
                "epochs": epochs,
                "train_seconds": seconds * epochs,
                "train_vs_map": seconds * epochs / base_total,
            }
        )
    return rows
