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
import sys
import time
from pathlib import Path
from typing import Any

from gradreg.compare import CompareSpec, run_comparison
from gradreg.compare_report import format_paired, format_summary, write_comparison

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", default="digits", help=f"comma-separated: {', '.join(SETTINGS)}"
    )
    parser.add_argument("--out", default="runs/method-comparison", help="one folder per setting")
    parser.add_argument("--seeds", type=int, help="override every setting's seed count")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        parser.error(
            f"unknown setting(s) {', '.join(unknown) or '(none)'}; known: {', '.join(SETTINGS)}"
        )
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
