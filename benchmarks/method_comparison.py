"""The fair method comparison behind BENCHMARKS.md: every method at its best, on the same seeds.

    .venv/bin/python benchmarks/method_comparison.py --settings digits,wine \
        --out docs/evidence/comparison

Each setting is one `gradreg compare`: every method gets the same random-search budget over
its own hyperparameters (`Method.space`), epochs chosen by early stopping on validation NLL,
all of it on seed 0's validation split; then 5 seeds (split and initialisation) of each
method's choice. Every row is a method's own predictive, raw and temperature-scaled (T fitted
on validation); MAP also gets a 5-member deep ensemble and the ensemble of its search's 5 best
configurations (what a sweep gives). The tables print paired differences of VL against each
row, measured in the same run. Files go to OUT/<setting>/.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from gradreg.comparison.report import format_paired, format_summary, write_comparison
from gradreg.comparison.runs import CompareSpec, run_comparison

METHODS = ["map", "vl-uniform", "vl-diagonal", "mcvi", "laplace"]
COMMON: dict[str, Any] = {
    "methods": METHODS,
    "seeds": 5,
    "search_budget": 8,
    "early_stopping": True,
    "ensemble": 5,
    "hyper_ensemble": 5,
    "ensemble_of": ["map"],
    "n_samples": 16,
    "device": "cpu",
}
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "epochs": 50},
    "wine": {"dataset": "wine", "epochs": 100, "batch_size": 32},
    "breast_cancer": {"dataset": "breast_cancer", "epochs": 60, "batch_size": 32},
    "mnist1d": {"dataset": "mnist1d", "epochs": 50},
    # MAP overfits here: ~2,000 training signals, a wide MLP, long training (issue 12).
    "mnist1d_overfit": {
        "dataset": "mnist1d",
        "val_fraction": 0.5,
        "model_options": {"hidden": [256, 256]},
        "epochs": 150,
        "batch_size": 64,
    },
    # A larger generated set and a CNN, where MC-VI's gradient noise has room to hurt.
    "mnist1d_cnn": {
        "dataset": "mnist1d",
        "dataset_options": {"n_samples": 15000},
        "model": "cnn",
        "epochs": 30,
    },
    # For the test suite: every code path in seconds.
    "smoke": {
        "dataset": "iris",
        "model_options": {"hidden": [8]},
        "epochs": 3,
        "seeds": 2,
        "search_budget": 2,
        "ensemble": 2,
        "hyper_ensemble": 2,
        "n_samples": 4,
        "methods": ["map", "vl-uniform", "laplace"],
    },
}


# (baseline, VL's variant, the baseline's variant): the pairs the tables print.
PAIRS = (
    ("map", "raw", "raw"),
    ("map", "raw", "ts"),
    ("map", "ts", "ts"),
    ("mcvi", "raw", "raw"),
    ("laplace", "raw", "raw"),
    ("map ×{ensemble}", "raw", "raw"),
    ("map top-{hyper_ensemble}", "raw", "raw"),
)
TABLE_METRICS = ("accuracy", "nll", "ece", "aece", "brier")


def markdown(out: Path, name: str) -> str:
    """BENCHMARKS.md's tables for one setting, from the files a run wrote to OUT/<name>."""
    folder = out / name
    document = json.loads((folder / "comparison.json").read_text())
    lines = [f"#### {name}", ""]
    chosen = document["chosen_hyperparameters"]
    lines += [
        "Chosen (seed-0 validation NLL): "
        + "; ".join(
            f"{m} {', '.join(f'{k} {v:.3g}' for k, v in values.items())}"
            for m, values in chosen.items()
        ),
        "",
        "| row | predictive | " + " | ".join(TABLE_METRICS) + " |",
        "|---|---|" + "---|" * len(TABLE_METRICS),
    ]
    for row in _csv(folder / "summary.csv"):
        label = row["label"] + (" +TS" if row["variant"] == "ts" else "")
        cells = " | ".join(
            f"{float(row[f'{m}_mean']):.4f} ± {float(row[f'{m}_se']):.4f}" for m in TABLE_METRICS
        )
        lines.append(f"| {label} | {row['predictive']} | {cells} |")
    lines += [
        "",
        "Paired test differences, VL minus each baseline (n/5: seeds on which VL was better):",
        "",
        "| pair | NLL | ECE | accuracy |",
        "|---|---|---|---|",
    ]
    paired = _csv(folder / "paired.csv")
    for vl in ("vl-uniform", "vl-diagonal"):
        for label, vl_variant, base_variant in PAIRS:
            baseline = label.format(**document["spec"])
            cells = []
            for metric in ("nll", "ece", "accuracy"):
                row = next(
                    (
                        r
                        for r in paired
                        if (r["vl"], r["baseline"], r["metric"]) == (vl, baseline, metric)
                        and (r["vl_variant"], r["baseline_variant"]) == (vl_variant, base_variant)
                    ),
                    None,
                )
                if row is None:
                    break
                cells.append(
                    f"{float(row['diff_mean']):+.4f} ± {float(row['diff_se']):.4f} "
                    f"({row['vl_better']}/{row['seeds']})"
                )
            if len(cells) == 3:
                left = vl + (" +TS" if vl_variant == "ts" else "")
                right = baseline + (" +TS" if base_variant == "ts" else "")
                lines.append(f"| {left} − {right} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", default="digits", help=f"comma-separated: {', '.join(SETTINGS)}"
    )
    parser.add_argument("--out", default="runs/method-comparison", help="one folder per setting")
    parser.add_argument("--seeds", type=int, help="override every setting's seed count")
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of runs already in --out"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        parser.error(
            f"unknown setting(s) {', '.join(unknown) or '(none)'}; known: {', '.join(SETTINGS)}"
        )
    if args.markdown:
        for name in names:
            print(markdown(Path(args.out), name))
        return
    for name in names:
        values = {**COMMON, **SETTINGS[name]}
        if args.seeds is not None:
            values["seeds"] = args.seeds
        spec = CompareSpec(**values)
        started = time.perf_counter()
        comparison = run_comparison(spec, tick=lambda label: print(f"  {label}", file=sys.stderr))
        minutes = (time.perf_counter() - started) / 60
        write_comparison(comparison, Path(args.out) / name)
        print(
            f"== {name}: {spec.dataset} with {spec.model} {spec.model_options or ''}, "
            f"{spec.seeds} seeds, {minutes:.1f} min"
        )
        for method, chosen in comparison.chosen.items():
            print(f"  {method}: {', '.join(f'{k}={v:.4g}' for k, v in chosen.items())}")
        print(format_summary(comparison))
        print()
        print(format_paired(comparison))
        print(flush=True)


if __name__ == "__main__":
    main()
