"""Method comparison: VL against MAP, sampling VI and post-hoc Laplace on the same seeds.

Every method trains the same model with the same prior family, the same training loop and,
for each seed s, the same data split (split_seed = s) and initialisation seed (seed = s).
Each is judged by its own posterior predictive (`Method.predictive`), raw and after
temperature scaling fitted on validation data. Hyperparameters are given (each method's
preset, then ``overrides``), chosen from the method's grid (``search``), or chosen by a random
search with the same budget for every method (``search_budget``); with ``early_stopping`` the
search also picks the epoch count by validation NLL. Selection uses seed 0's validation NLL;
test metrics are never used to choose.

Ensembles (``ensemble=K``): for each seed, K members of the same configuration with K
initialisation seeds on that seed's split (a deep ensemble), and, after a search, the K best
configurations of the search (``hyper_ensemble=K``, the ensemble a sweep gives).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradreg.config import METHOD_FIELDS, TrainConfig
from gradreg.evaluation.calibration import TemperatureFit, scale
from gradreg.evaluation.ensembles import EnsembleResult, average, evaluate_ensemble
from gradreg.evaluation.metrics import ReliabilityBins, pool_reliability_bins, reliability_bins
from gradreg.methods import METHODS, get_method
from gradreg.train import FitResult, Predictions, fit, load_config_dataset

# Grid and search-space values for these settings are multiples of the comparison's lr.
RELATIVE_TO_LR = ("variance_lr",)
SELECTION_METRIC = "val_nll"
SEARCH_SEED = 20_201_010  # the random search's points depend on this and the method only
MEMBER_SEED_STRIDE = 1000  # deep-ensemble member k of seed s trains with seed s + k·stride


def default_methods() -> list[str]:
    return [name for name, method in METHODS.items() if method.compare_by_default]


def preset(method: str) -> dict[str, Any]:
    """The TrainConfig settings a comparison starts ``method`` from (before overrides)."""
    entry = get_method(method)
    return {**entry.train_settings({}), **entry.preset}


@dataclass
class CompareSpec:
    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    methods: list[str] = field(default_factory=default_methods)
    seeds: int = 5
    epochs: int = 30
    batch_size: int = 128
    lr: float | None = None  # every method's; None: each method's own (`Method.default_lr`)
    n_samples: int = 32
    fisher: str | None = None
    regulariser_grad: str | None = None  # for the methods that read it (vl-*)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: bool = False
    search_budget: int = 0
    early_stopping: bool = False
    ensemble: int = 0
    hyper_ensemble: int = 0
    ensemble_of: list[str] | None = None  # the methods that get ensemble rows; None: all
    val_fraction: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown or missing method(s) {', '.join(unknown) or '(none)'}; accepted: "
                f"{', '.join(METHODS)}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods are listed twice: {', '.join(self.methods)}")
        stray = sorted(set(self.overrides) - set(self.methods))
        if stray:
            raise ValueError(f"settings given for method(s) not compared: {', '.join(stray)}")
        for name in ("seeds", "search_budget", "ensemble", "hyper_ensemble"):
            value = getattr(self, name)
            minimum = 1 if name == "seeds" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.search and self.search_budget:
            raise ValueError("give search (each method's grid) or search_budget, not both")
        searching = self.search or self.search_budget > 0
        if self.early_stopping and not searching:
            raise ValueError("early_stopping picks the epochs in the search: give a search")
        if self.hyper_ensemble and not searching:
            raise ValueError("hyper_ensemble takes the search's best points: give a search")
        if self.ensemble == 1 or self.hyper_ensemble == 1:
            raise ValueError("an ensemble needs at least 2 members")
        if self.ensemble_of is not None:
            stray = sorted(set(self.ensemble_of) - set(self.methods))
            if stray:
                raise ValueError(f"ensembles asked of method(s) not compared: {', '.join(stray)}")
        for method in self.methods:  # every configuration must be valid before anything runs
            self.config(method, seed=0)

    @property
    def searching(self) -> bool:
        return self.search or self.search_budget > 0

    def lr_of(self, method: str) -> float:
        """The lr ``method`` starts from: the comparison's, or the method's own default."""
        return self.lr if self.lr is not None else get_method(method).default_lr

    def config(self, method: str, seed: int, **extra: Any) -> TrainConfig:
        values = {
            "dataset": self.dataset,
            "dataset_options": dict(self.dataset_options),
            "model": self.model,
            "model_options": dict(self.model_options),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr_of(method),
            "n_samples": self.n_samples,
            "device": self.device,
            "seed": seed,
            "split_seed": seed,
            **preset(method),
        }
        if self.val_fraction is not None:
            values["val_fraction"] = self.val_fraction
        if self.fisher is not None and METHODS[method].uses_fisher:
            values["fisher"] = self.fisher
        if self.regulariser_grad is not None and "regulariser_grad" in METHODS[method].settings():
            values["regulariser_grad"] = self.regulariser_grad
        values.update(self.overrides.get(method, {}))
        values.update(extra)
        return TrainConfig.from_dict(values)


@dataclass
class Comparison:
    spec: CompareSpec
    chosen: dict[str, dict[str, Any]]
    search_runs: list[dict[str, Any]]
    runs: list[dict[str, Any]]  # one per (label, seed): a method's run or an ensemble
    bins: dict[tuple[str, str], ReliabilityBins]  # (label, variant) → pooled over seeds
    labels: list[str]  # every row label: the methods, then their ensembles


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


# ---------------------------------------------------------------- choosing hyperparameters


def _grid(method: str, lr: float) -> list[dict[str, float]]:
    grid = {
        key: [v * lr for v in values] if key in RELATIVE_TO_LR else list(values)
        for key, values in METHODS[method].grid.items()
    }
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _random_points(method: str, lr: float, budget: int) -> list[dict[str, float]]:
    """``budget`` points, log-uniform over the method's space, the same for every run."""
    space = METHODS[method].space
    if not space:
        raise ValueError(f"method {method!r} has no search space in the method table")
    rng = np.random.default_rng([SEARCH_SEED, list(METHODS).index(method)])
    points = []
    for _ in range(budget):
        point = {}
        for key, (low, high) in space.items():
            value = float(np.exp(rng.uniform(math.log(low), math.log(high))))
            point[key] = value * lr if key in RELATIVE_TO_LR else value
        points.append(point)
    return points


def search_points(spec: CompareSpec, method: str) -> list[dict[str, float]]:
    if spec.search:
        return _grid(method, spec.lr_of(method))
    return _random_points(method, spec.lr_of(method), spec.search_budget)


def plan_size(spec: CompareSpec) -> int:
    """How many training runs the comparison makes (for a progress bar)."""
    searched = sum(len(search_points(spec, m)) for m in spec.methods) if spec.searching else 0
    extra = max(0, spec.ensemble - 1) + max(0, spec.hyper_ensemble - 1)
    ensembled = len(spec.methods if spec.ensemble_of is None else spec.ensemble_of)
    return searched + spec.seeds * (len(spec.methods) + ensembled * extra)


def _score(result: FitResult, early_stopping: bool) -> tuple[float, int]:
    """(validation NLL, epochs): at the last epoch, or at the best one with early stopping."""
    history = result.history
    if not early_stopping:
        return history[-1][SELECTION_METRIC], len(history)
    best = min(range(len(history)), key=lambda i: history[i][SELECTION_METRIC])
    return history[best][SELECTION_METRIC], best + 1


def choose_hyperparameters(
    spec: CompareSpec, tick: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per method, the search point with the best seed-0 validation NLL of its own predictive
    (with early stopping, at its best epoch, which becomes the chosen ``epochs``)."""
    chosen, records = {}, []
    for method in spec.methods:
        given = spec.overrides.get(method, {})
        scored = []
        for point in search_points(spec, method):
            point = {k: v for k, v in point.items() if k not in given}  # given values win
            score, epochs = _score(fit(spec.config(method, seed=0, **point)), spec.early_stopping)
            if spec.early_stopping:
                point = {**point, "epochs": epochs}
            records.append({"method": method, **point, SELECTION_METRIC: score})
            scored.append((score, point))
            tick(f"search {method}")
        ranked = [point for _, point in sorted(scored, key=lambda item: item[0])]
        chosen[method] = ranked[0] if ranked else {}
        for rank, point in enumerate(ranked):
            next(r for r in records if r["method"] == method and _same(r, point))["rank"] = rank
    return chosen, records


def _same(record: dict[str, Any], point: dict[str, Any]) -> bool:
    return all(record.get(k) == v for k, v in point.items())


# ---------------------------------------------------------------- running


def run_comparison(spec: CompareSpec, tick: Callable[[str], None] = lambda _: None) -> Comparison:
    if spec.searching:
        chosen, search_runs = choose_hyperparameters(spec, tick)
    else:
        chosen, search_runs = {m: {} for m in spec.methods}, []
    runs: list[dict[str, Any]] = []
    bins: dict[tuple[str, str], list[ReliabilityBins]] = {}
    labels = list(spec.methods)
    for method, seed in itertools.product(spec.methods, range(spec.seeds)):
        config = spec.config(method, seed, **chosen[method])
        result = fit(config)
        runs.append(_run_record(method, seed, config, result))
        assert result.temperature is not None  # fit() always evaluates
        _add_bins(bins, method, result.predictions, result.temperature)
        tick(f"{method} seed {seed}")
        for label, members in _ensembles(spec, method, seed, config, result, search_runs, tick):
            if label not in labels:
                labels.append(label)
            ensemble = _evaluate_members(members)
            runs.append(_ensemble_record(label, method, seed, len(members), ensemble))
            _add_bins(bins, label, _mean_predictions(members), ensemble.temperature)
    pooled = {key: pool_reliability_bins(parts) for key, parts in bins.items()}
    return Comparison(spec, chosen, search_runs, runs, pooled, labels)


def _ensembles(
    spec: CompareSpec,
    method: str,
    seed: int,
    config: TrainConfig,
    first: FitResult,
    search_runs: list[dict[str, Any]],
    tick: Callable[[str], None],
) -> list[tuple[str, list[dict[str, Predictions]]]]:
    """(label, members' predictions) of each ensemble of this method and seed."""
    found: list[tuple[str, list[dict[str, Predictions]]]] = []
    if spec.ensemble_of is not None and method not in spec.ensemble_of:
        return found
    if spec.ensemble:
        members = [first.predictions]
        for k in range(1, spec.ensemble):
            member = config.replace(seed=seed + k * MEMBER_SEED_STRIDE)
            members.append(fit(member).predictions)
            tick(f"{method} seed {seed} member {k}")
        found.append((f"{method} ×{spec.ensemble}", members))
    if spec.hyper_ensemble:
        ranked = sorted((r for r in search_runs if r["method"] == method), key=lambda r: r["rank"])[
            : spec.hyper_ensemble
        ]
        members = [first.predictions]
        for record in ranked[1:]:
            point = {
                k: v for k, v in record.items() if k not in ("method", "rank", SELECTION_METRIC)
            }
            members.append(fit(spec.config(method, seed, **point)).predictions)
            tick(f"{method} seed {seed} top-{record['rank'] + 1}")
        found.append((f"{method} top-{spec.hyper_ensemble}", members))
    return found


def _evaluate_members(members: list[dict[str, Predictions]]) -> EnsembleResult:
    """The equal-weight ensemble: its averaged predictive and its raw and temperature-scaled
    metrics on val and test."""
    splits = list(members[0])
    probs = {s: [m[s].probs for m in members] for s in splits}
    labels = {s: members[0][s].labels for s in splits}
    return evaluate_ensemble(probs, labels, range(len(members)))


def _mean_predictions(members: list[dict[str, Predictions]]) -> dict[str, Predictions]:
    """The ensemble's predictive per split: the members' probabilities averaged."""
    return {
        s: Predictions(average([m[s].probs for m in members]), members[0][s].labels)
        for s in members[0]
    }


def _run_record(method: str, seed: int, config: TrainConfig, result: FitResult) -> dict[str, Any]:
    data = load_config_dataset(config)
    steps = math.ceil(data.n_train / config.batch_size)
    seconds = statistics.fmean(h["train_seconds"] for h in result.history)
    metrics = result.metrics
    return {
        "label": method,
        "method": method,
        "seed": seed,
        "members": 1,
        "predictive": config.predict,
        **{k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))},
        "temperature_scaling": _temperature_note(result.temperature),
        "seconds_per_epoch": seconds,
        "ms_per_step": 1000 * seconds / steps,
        "epochs": len(result.history),
        # how far σ moved from where it started (sampling VI converges slowly)
        "posterior_std_epoch1": result.history[0]["posterior_std_mean"],
        "posterior_std_final": metrics["posterior_std_mean"],
        **{k: v for k, v in metrics.items() if k.startswith("posterior_") and "std" not in k},
        **_hyperparameters(config),
    }


def _ensemble_record(
    label: str, method: str, seed: int, size: int, ensemble: EnsembleResult
) -> dict[str, Any]:
    return {
        "label": label,
        "method": method,
        "seed": seed,
        "members": size,
        "predictive": "ensemble",
        **ensemble.metrics,
        "temperature_scaling": _temperature_note(ensemble.temperature),
    }


def _temperature_note(temperature: TemperatureFit | None) -> str | None:
    """Why a run's T was left at 1 (its ``val_temperature_fitted`` is 0); None when fitted."""
    return temperature.reason if temperature is not None else None


def _add_bins(
    bins: dict[tuple[str, str], list[ReliabilityBins]],
    label: str,
    predictions: dict[str, Predictions],
    temperature: TemperatureFit,
) -> None:
    """The test split's bins, raw and temperature-scaled (by the T reported: fitted on val,
    or 1 where it was not fitted)."""
    test = predictions["test"]
    scaled = scale(test.probs.clamp_min(1e-300).log(), temperature.temperature).exp()
    bins.setdefault((label, "raw"), []).append(reliability_bins(test.probs, test.labels))
    bins.setdefault((label, "ts"), []).append(reliability_bins(scaled, test.labels))


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """The settings a method comparison varies: the shared ones and every method's own."""
    keys = ("prior_variance", "lr", "kl_weight", *METHOD_FIELDS)
    return {key: getattr(config, key) for key in keys}
