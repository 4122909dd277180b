"""Tables and files of a method comparison: summaries, paired differences, diagrams.

A row label is a method (judged by its own predictive) or one of its ensembles; a variant is
``raw`` or ``ts`` (after temperature scaling fitted on validation data). Where a seed's
validation data did not determine a temperature (`gradreg.evaluation.calibration`), its ``ts``
numbers are the raw ones (T = 1): the run says why (``temperature_scaling``), a ``ts`` summary
row counts such seeds (``ts_not_fitted``), and the printed table marks the row.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gradreg.comparison.runs import SELECTION_METRIC, Comparison, mean_and_se
from gradreg.evaluation.plots import write_reliability_diagram
from gradreg.names import CLASSIFICATION_METRICS, higher_is_better

METRICS = CLASSIFICATION_METRICS
VARIANTS = {"raw": "", "ts": "_ts"}
# Paired differences: (VL's variant, the baseline's variant).
PAIRINGS = (("raw", "raw"), ("ts", "ts"), ("raw", "ts"))


def summary_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Mean and standard error over seeds of each (label, variant)'s test metrics."""
    rows = []
    for label, variant in itertools.product(comparison.labels, VARIANTS):
        runs = [r for r in comparison.runs if r["label"] == label]
        row: dict[str, Any] = {
            "label": label,
            "variant": variant,
            "predictive": runs[0]["predictive"] if runs else None,
            "members": runs[0]["members"] if runs else None,
            "seeds": len(runs),
        }
        for metric in METRICS:
            values = [r[f"test_{metric}{VARIANTS[variant]}"] for r in runs]
            row[f"{metric}_mean"], row[f"{metric}_se"] = mean_and_se(values)
        if variant == "ts":  # seeds whose T was left at 1: their "scaled" numbers are raw
            row["ts_not_fitted"] = sum(r["val_temperature_fitted"] == 0.0 for r in runs)
        if variant == "raw":
            for extra in ("seconds_per_epoch", "ms_per_step", "posterior_std_final", "epochs"):
                values = [r[extra] for r in runs if extra in r]
                row[f"{extra}_mean"] = mean_and_se(values)[0] if values else None
        rows.append(row)
    return rows


def paired_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Each VL method minus each other row, seed by seed, on the test split."""
    rows = []
    vls = [m for m in comparison.spec.methods if m.startswith("vl-")]
    for vl, baseline, (vl_variant, base_variant) in itertools.product(
        vls, comparison.labels, PAIRINGS
    ):
        if baseline == vl:
            continue
        for metric in METRICS:
            diffs = []
            for seed in range(comparison.spec.seeds):
                a = _value(comparison, vl, seed, f"test_{metric}{VARIANTS[vl_variant]}")
                b = _value(comparison, baseline, seed, f"test_{metric}{VARIANTS[base_variant]}")
                diffs.append(a - b)
            better = [d > 0 if higher_is_better(metric) else d < 0 for d in diffs]
            mean, se = mean_and_se(diffs)
            rows.append(
                {
                    "vl": vl,
                    "vl_variant": vl_variant,
                    "baseline": baseline,
                    "baseline_variant": base_variant,
                    "metric": metric,
                    "diff_mean": mean,
                    "diff_se": se,
                    "vl_better": sum(better),
                    "seeds": len(diffs),
                }
            )
    return rows


def _value(comparison: Comparison, label: str, seed: int, key: str) -> float:
    for run in comparison.runs:
        if (run["label"], run["seed"]) == (label, seed):
            value: float = run[key]
            return value
    raise KeyError((label, seed))


def format_summary(comparison: Comparison) -> str:
    header = f"{'':<22} {'predictive':<11}" + "".join(f"{m:>17}" for m in METRICS)
    header += f"{'s/epoch':>9}"
    lines = [header, "-" * len(header)]
    notes = []
    for row in summary_rows(comparison):
        name = row["label"] + (" +TS" if row["variant"] == "ts" else "")
        if row.get("ts_not_fitted"):
            name += "*"
            notes.append(_not_fitted_note(comparison, row))
        cells = "".join(f"{row[f'{m}_mean']:>9.4f} ±{row[f'{m}_se']:>6.4f}" for m in METRICS)
        seconds = row.get("seconds_per_epoch_mean")
        time = f"{seconds:>9.3f}" if seconds is not None else f"{'':>9}"
        lines.append(f"{name:<22} {row['predictive']:<11}{cells}{time}")
    return "\n".join(lines + notes)


def _not_fitted_note(comparison: Comparison, row: dict[str, Any]) -> str:
    """The footnote of a +TS row with seeds whose temperature was not fitted."""
    runs = [r for r in comparison.runs if r["label"] == row["label"]]
    unfitted = [r for r in runs if r["val_temperature_fitted"] == 0.0]
    seeds = ("seed " if len(unfitted) == 1 else "seeds ") + ", ".join(
        str(r["seed"]) for r in unfitted
    )
    reason = str(unfitted[0]["temperature_scaling"]).removeprefix("not fitted: ")
    return (
        f"* {row['label']} +TS: T not fitted on {len(unfitted)} of {len(runs)} seeds ({seeds}), "
        f"whose +TS numbers are the raw ones (T = 1); seed {unfitted[0]['seed']}: {reason}"
    )


def format_paired(comparison: Comparison) -> str:
    """VL minus each other row, raw against raw and scaled against scaled."""
    rows = [r for r in paired_rows(comparison) if r["vl_variant"] == r["baseline_variant"]]
    if not rows:
        return "(no VL method and baseline pair to compare)"
    header = f"{'VL − baseline (test)':<38}" + "".join(f"{m:>24}" for m in METRICS)
    lines = [header, "-" * len(header)]
    keys = dict.fromkeys((r["vl"], r["baseline"], r["vl_variant"]) for r in rows)
    for vl, baseline, variant in keys:
        cells = ""
        for r in rows:
            if (r["vl"], r["baseline"], r["vl_variant"]) == (vl, baseline, variant):
                cells += (
                    f"{r['diff_mean']:>+9.4f} ±{r['diff_se']:.4f} ({r['vl_better']}/{r['seeds']})"
                )
        suffix = " (both +TS)" if variant == "ts" else ""
        lines.append(f"{vl + ' − ' + baseline + suffix:<38}{cells}")
    lines.append("(n/m: seeds on which VL was better; lower is better except for accuracy)")
    return "\n".join(lines)


def write_comparison(comparison: Comparison, directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    summary, paired = summary_rows(comparison), paired_rows(comparison)
    paths = [
        _write_csv(out / "runs.csv", comparison.runs),
        _write_csv(out / "summary.csv", summary),
        _write_csv(out / "paired.csv", paired),
    ]
    if comparison.search_runs:
        paths.append(_write_csv(out / "search.csv", comparison.search_runs))
    spec = comparison.spec
    selection = f"{SELECTION_METRIC} on seed 0" if spec.searching else "given"
    document = {
        "spec": asdict(spec),
        "chosen_hyperparameters": comparison.chosen,
        "selection": selection + (", epochs by early stopping" if spec.early_stopping else ""),
        "summary": summary,
        "paired": paired,
        "runs": comparison.runs,
        "reliability_bins": {f"{k}/{v}": b.to_dict() for (k, v), b in comparison.bins.items()},
    }
    path = out / "comparison.json"
    path.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    paths.append(path)
    for variant in VARIANTS:
        series = {label: comparison.bins[(label, variant)] for label in comparison.labels}
        scaled = ", temperature-scaled" if variant == "ts" else ""
        title = f"{spec.dataset}: test reliability{scaled}, own predictive, all seeds"
        paths.append(
            write_reliability_diagram(out / f"reliability_{variant}.png", series, title=title)
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
