"""Method comparison: VL against MAP, sampling VI and post-hoc Laplace on the same seeds.

Every method trains the same model with the same prior, the same training loop, and — for
each seed s — the same data split (split_seed = s) and initialisation seed (seed = s).
Hyperparameters are either given (defaults below, overridden per method) or chosen by a
small grid search on the validation set of seed 0 (``search=True``); test metrics are never
used to choose.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradreg.config import METHOD_FIELDS, TrainConfig
from gradreg.methods import METHODS, get_method
from gradreg.metrics import ReliabilityBins, pool_reliability_bins
from gradreg.names import CLASSIFICATION_METRICS, higher_is_better
from gradreg.plots import write_reliability_diagram
from gradreg.train import evaluate, fit, load_config_dataset

# Grid values for these settings are multiples of the comparison's lr.
RELATIVE_TO_LR = ("variance_lr",)
METRICS = CLASSIFICATION_METRICS
MODES = ("mean", "sample")
SELECTION_METRIC = "val_nll"


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
    lr: float = 1e-3
    n_samples: int = 32
    fisher: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: bool = False
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
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {self.seeds!r}")
        for method in self.methods:  # every configuration must be valid before anything runs
            self.config(method, seed=0)

    def config(self, method: str, seed: int, **extra: Any) -> TrainConfig:
        values = {
            "dataset": self.dataset,
            "dataset_options": dict(self.dataset_options),
            "model": self.model,
            "model_options": dict(self.model_options),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "n_samples": self.n_samples,
            "predict": "sample",
            "device": self.device,
            "seed": seed,
            "split_seed": seed,
            **preset(method),
        }
        if self.fisher is not None and METHODS[method].uses_fisher:
            values["fisher"] = self.fisher
        values.update(self.overrides.get(method, {}))
        values.update(extra)
        return TrainConfig.from_dict(values)


@dataclass
class Comparison:
    spec: CompareSpec
    chosen: dict[str, dict[str, Any]]
    search_runs: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    bins: dict[tuple[str, str], ReliabilityBins]

    def summary_rows(self) -> list[dict[str, Any]]:
        """Mean and standard error over seeds for each (method, mode)."""
        rows = []
        for method, mode in itertools.product(self.spec.methods, MODES):
            runs = [r for r in self.runs if r["method"] == method and r["mode"] == mode]
            row: dict[str, Any] = {"method": method, "mode": mode, "seeds": len(runs)}
            extra = ("seconds_per_epoch", "ms_per_step", "posterior_std_final")
            for metric in (*METRICS, *extra):
                key = metric if metric in extra else f"test_{metric}"
                row[f"{metric}_mean"], row[f"{metric}_se"] = mean_and_se([r[key] for r in runs])
            rows.append(row)
        return rows

    def paired_rows(self) -> list[dict[str, Any]]:
        """VL minus each baseline, seed by seed (sample predictive; test split)."""
        rows = []
        vls = [m for m in self.spec.methods if m.startswith("vl-")]
        baselines = [m for m in self.spec.methods if not m.startswith("vl-")]
        for vl, baseline in itertools.product(vls, baselines):
            for metric in METRICS:
                diffs = []
                for seed in range(self.spec.seeds):
                    a = self._value(vl, seed, "sample", f"test_{metric}")
                    b = self._value(baseline, seed, "sample", f"test_{metric}")
                    diffs.append(a - b)
                better = [d > 0 if higher_is_better(metric) else d < 0 for d in diffs]
                mean, se = mean_and_se(diffs)
                rows.append(
                    {
                        "vl": vl,
                        "baseline": baseline,
                        "metric": metric,
                        "diff_mean": mean,
                        "diff_se": se,
                        "vl_better": sum(better),
                        "seeds": len(diffs),
                    }
                )
        return rows

    def _value(self, method: str, seed: int, mode: str, key: str) -> float:
        for run in self.runs:
            if (run["method"], run["seed"], run["mode"]) == (method, seed, mode):
                return run[key]
        raise KeyError((method, seed, mode))


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def _grid(method: str, lr: float) -> list[dict[str, float]]:
    grid = {
        key: [v * lr for v in values] if key in RELATIVE_TO_LR else values
        for key, values in METHODS[method].grid.items()
    }
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def plan_size(spec: CompareSpec) -> int:
    searched = sum(len(_grid(m, spec.lr)) for m in spec.methods) if spec.search else 0
    return searched + len(spec.methods) * spec.seeds


def choose_hyperparameters(
    spec: CompareSpec, tick: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per method, the grid point with the best seed-0 validation NLL (sample predictive)."""
    chosen, records = {}, []
    for method in spec.methods:
        best = None
        for point in _grid(method, spec.lr):
            given = spec.overrides.get(method, {})
            point = {k: v for k, v in point.items() if k not in given}  # given values win
            result = fit(spec.config(method, seed=0, **point))
            score = result.metrics[SELECTION_METRIC]
            records.append({"method": method, **point, SELECTION_METRIC: score})
            if best is None or score < best[0]:
                best = (score, point)
            tick(f"search {method}")
        chosen[method] = best[1] if best else {}
    return chosen, records


def run_comparison(spec: CompareSpec, tick: Callable[[str], None] = lambda _: None) -> Comparison:
    chosen, search_runs = (
        choose_hyperparameters(spec, tick) if spec.search else ({m: {} for m in spec.methods}, [])
    )
    runs: list[dict[str, Any]] = []
    bins: dict[tuple[str, str], list[ReliabilityBins]] = {}
    for method, seed in itertools.product(spec.methods, range(spec.seeds)):
        config = spec.config(method, seed, **chosen[method])
        result = fit(config)
        data = load_config_dataset(config)
        device = next(result.posterior.parameters()).device
        steps = math.ceil(data.n_train / config.batch_size)
        seconds = statistics.fmean(h["train_seconds"] for h in result.history)
        for mode in MODES:
            mode_config = config.replace(predict=mode)
            val, _ = evaluate(
                result.posterior, data.x_val.to(device), data.y_val.to(device), mode_config, "val_"
            )
            test, test_bins = evaluate(
                result.posterior,
                data.x_test.to(device),
                data.y_test.to(device),
                mode_config,
                "test_",
            )
            bins.setdefault((method, mode), []).append(test_bins)
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "mode": mode,
                    **val,
                    **test,
                    "seconds_per_epoch": seconds,
                    "ms_per_step": 1000 * seconds / steps,
                    "epochs": len(result.history),
                    # how far σ moved from where it started (sampling VI converges slowly)
                    "posterior_std_epoch1": result.history[0]["posterior_std_mean"],
                    "posterior_std_final": result.history[-1]["posterior_std_mean"],
                    **_hyperparameters(config),
                }
            )
        tick(f"{method} seed {seed}")
    pooled = {key: pool_reliability_bins(parts) for key, parts in bins.items()}
    return Comparison(spec, chosen, search_runs, runs, pooled)


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """The settings a method comparison varies: the shared ones and every method's own."""
    keys = ("prior_variance", "lr", "kl_weight", *METHOD_FIELDS)
    return {key: getattr(config, key) for key in keys}


def format_summary(comparison: Comparison) -> str:
    header = f"{'method':<12} {'mode':<6}" + "".join(f"{m:>17}" for m in METRICS)
    header += f"{'s/epoch':>9}{'ms/step':>9}"
    lines = [header, "-" * len(header)]
    for row in comparison.summary_rows():
        cells = "".join(f"{row[f'{m}_mean']:>9.4f} ±{row[f'{m}_se']:>6.4f}" for m in METRICS)
        lines.append(
            f"{row['method']:<12} {row['mode']:<6}{cells}"
            f"{row['seconds_per_epoch_mean']:>9.3f}{row['ms_per_step_mean']:>9.2f}"
        )
    return "\n".join(lines)


def format_paired(comparison: Comparison) -> str:
    """One row per (VL, baseline) pair: mean difference ± se, and seeds where VL was better."""
    rows = comparison.paired_rows()
    if not rows:
        return "(no VL method and baseline pair to compare)"
    header = f"{'VL − baseline (test, sample)':<26}" + "".join(f"{m:>24}" for m in METRICS)
    lines = [header, "-" * len(header)]
    pairs = dict.fromkeys((r["vl"], r["baseline"]) for r in rows)
    for vl, baseline in pairs:
        cells = ""
        for r in (r for r in rows if (r["vl"], r["baseline"]) == (vl, baseline)):
            cells += f"{r['diff_mean']:>+9.4f} ±{r['diff_se']:.4f} ({r['vl_better']}/{r['seeds']})"
        lines.append(f"{vl + ' − ' + baseline:<26}{cells}")
    lines.append("(n/m: seeds on which VL was better; lower is better except for accuracy)")
    return "\n".join(lines)


def write_comparison(comparison: Comparison, directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _write_csv(out / "runs.csv", comparison.runs),
        _write_csv(out / "summary.csv", comparison.summary_rows()),
        _write_csv(out / "paired.csv", comparison.paired_rows()),
    ]
    if comparison.search_runs:
        paths.append(_write_csv(out / "search.csv", comparison.search_runs))
    summary = {
        "spec": asdict(comparison.spec),
        "chosen_hyperparameters": comparison.chosen,
        "selection": f"{SELECTION_METRIC} on seed 0" if comparison.spec.search else "given",
        "summary": comparison.summary_rows(),
        "paired": comparison.paired_rows(),
        "runs": comparison.runs,
        "reliability_bins": {
            f"{m}/{mode}": b.to_dict() for (m, mode), b in comparison.bins.items()
        },
    }
    path = out / "comparison.json"
    path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    paths.append(path)
    for mode in MODES:
        series = {m: comparison.bins[(m, mode)] for m in comparison.spec.methods}
        title = f"{comparison.spec.dataset}: test reliability, {mode} predictive, all seeds"
        paths.append(
            write_reliability_diagram(out / f"reliability_{mode}.png", series, title=title)
        )
    return paths


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (strict JSON); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
