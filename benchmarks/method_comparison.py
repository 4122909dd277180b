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

A comparison can be extended without rerunning it: ``--methods map,ivon`` runs some of each
setting's methods into another OUT; ``--joined STORED --cost`` times every method of both
(one thread, `gradreg.comparison.joined`) into OUT/<setting>/cost.csv; ``--joined STORED
--markdown [--figure PATH]`` prints the joined tables (with whether the methods both ran give
the same numbers) and draws test NLL after TS against training time.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from gradreg.comparison.joined import (
    StoredComparison,
    cost_rows,
    load,
    lookup,
    paired,
    reproduction,
    require_same_setting,
    time_methods,
    timing_spec,
)
from gradreg.comparison.report import format_paired, format_summary, write_comparison
from gradreg.comparison.runs import CompareSpec, mean_and_se, run_comparison
from gradreg.evaluation.plots import write_cost_figure

METHODS = ["map", "vl-uniform", "vl-diagonal", "mcvi", "laplace", "ivon"]
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
        "methods": ["map", "vl-uniform", "laplace", "ivon"],
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


def setting_values(name: str, methods: list[str] | None = None) -> dict[str, Any]:
    """The CompareSpec arguments of setting ``name``, restricted to ``methods`` (in the
    setting's order) when given; the ensembles keep only the methods still compared."""
    values = {**COMMON, **SETTINGS[name]}
    if methods is not None:
        values["methods"] = [m for m in values["methods"] if m in methods]
        values["ensemble_of"] = [m for m in values["ensemble_of"] if m in methods]
    return values


# (first, second) of the joined tables' paired differences: (label, variant) each.
JOINED_PAIRS = (
    (("vl-uniform", "raw"), ("ivon", "raw")),
    (("vl-uniform", "ts"), ("ivon", "ts")),
    (("vl-diagonal", "raw"), ("ivon", "raw")),
    (("vl-diagonal", "ts"), ("ivon", "ts")),
    (("ivon", "raw"), ("map", "raw")),
    (("ivon", "raw"), ("map", "ts")),
    (("ivon", "ts"), ("map", "ts")),
)
JOINED_METRICS = (("accuracy", "raw"), ("nll", "raw"), ("ece", "raw"), ("nll", "ts"), ("ece", "ts"))


def _parts(stored: Path, out: Path, name: str) -> tuple[StoredComparison, StoredComparison]:
    first, second = load(stored / name), load(out / name)
    require_same_setting(first, second)
    return first, second


def joined_markdown(stored: Path, out: Path, name: str) -> str:
    """One setting's tables of a stored comparison joined with --out's run of it: whether the
    rows both hold agree, every method's test metrics, the paired differences of
    `JOINED_PAIRS` and, where a cost pass ran, the cost table."""
    first, second = _parts(stored, out, name)
    runs = lookup([second, first])  # a method both ran: the rerun's, by today's code
    seeds = int(first.spec["seeds"])
    lines = [f"#### {name}", ""]
    for agreement in reproduction(first, second):
        verdict = "reproduced exactly" if agreement.exact else "NOT reproduced exactly"
        lines.append(f"- rerun of {agreement.describe()}: {verdict}")
    chosen = second.chosen
    lines += [
        "",
        "Chosen (seed-0 validation NLL): "
        + "; ".join(
            f"{m} {', '.join(f'{k} {v:.3g}' for k, v in chosen[m].items())}"
            for m in second.spec["methods"]
            if m not in first.spec["methods"]
        ),
        "",
        "| method | "
        + " | ".join(f"{m}{' +TS' if v == 'ts' else ''}" for m, v in JOINED_METRICS)
        + " |",
        "|---|" + "---|" * len(JOINED_METRICS),
    ]
    methods = list(dict.fromkeys([*first.spec["methods"], *second.spec["methods"]]))
    for method in methods:
        cells = []
        for metric, variant in JOINED_METRICS:
            key = f"test_{metric}{'_ts' if variant == 'ts' else ''}"
            mean, se = mean_and_se([runs[(method, s)][key] for s in range(seeds)])
            cells.append(f"{mean:.4f} ± {se:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired test differences (n/5: seeds on which the first was better):",
        "",
        "| pair | NLL | ECE | accuracy |",
        "|---|---|---|---|",
    ]
    for first_row, second_row in JOINED_PAIRS:
        if (first_row[0], 0) not in runs or (second_row[0], 0) not in runs:
            continue
        rows = paired(runs, first_row, second_row, seeds)
        cells = [
            f"{r['diff_mean']:+.4f} ± {r['diff_se']:.4f} ({r['first_better']}/{r['seeds']})"
            for r in rows
        ]
        left, right = (f"{lbl}{' +TS' if v == 'ts' else ''}" for lbl, v in (first_row, second_row))
        lines.append(f"| {left} − {right} | " + " | ".join(cells) + " |")
    cost = out / name / "cost.csv"
    if cost.is_file():
        lines += [
            "",
            "Cost (one thread; seconds per epoch timed on seed 0's chosen configuration, "
            "epochs as early stopping chose them):",
            "",
            "| method | s/epoch | per epoch vs MAP | epochs | training s | training vs MAP |",
            "|---|---|---|---|---|---|",
        ]
        for row in _csv(cost):
            lines.append(
                f"| {row['method']} | {float(row['seconds_per_epoch']):.4f} | "
                f"{float(row['per_epoch_vs_map']):.2f}× | {row['epochs']} | "
                f"{float(row['train_seconds']):.2f} | {float(row['train_vs_map']):.2f}× |"
            )
    return "\n".join(lines) + "\n"


def write_cost(stored: Path, out: Path, name: str, epochs: int) -> Path:
    """The timing pass of every method of one setting (`joined.time_methods`), written as
    OUT/<setting>/cost.csv (`joined.cost_rows`)."""
    parts = _parts(stored, out, name)
    spec, chosen = timing_spec(parts)
    timings = time_methods(
        spec, chosen, epochs, tick=lambda label: print(f"  {name}: {label}", file=sys.stderr)
    )
    rows = cost_rows(timings, lookup(parts))
    path = out / name / "cost.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_figure(stored: Path, out: Path, names: list[str], path: str) -> Path:
    """Test NLL after temperature scaling against training time to the chosen epoch (one
    thread), one panel per setting, one point per method (mean ± se over seeds)."""
    panels: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name in names:
        parts = _parts(stored, out, name)
        runs, seeds = lookup(parts[::-1]), int(parts[0].spec["seeds"])
        cost = out / name / "cost.csv"
        if not cost.is_file():
            raise FileNotFoundError(f"{name}: no cost pass in {cost}; run --cost first")
        panels[name] = {}
        for row in _csv(cost):
            method = row["method"]
            mean, se = mean_and_se([runs[(method, s)]["test_nll_ts"] for s in range(seeds)])
            panels[name][method] = (float(row["train_seconds"]), mean, se)
    return write_cost_figure(
        path,
        panels,
        xlabel="training time to the chosen epoch (s, one thread)",
        ylabel="test NLL after TS",
        title="Calibration against cost: test NLL (+TS, mean ± se of 5 seeds) and training time",
    )


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
        "--methods",
        help="comma-separated subset of each setting's methods (e.g. map,ivon); default all",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of runs already in --out"
    )
    parser.add_argument(
        "--joined",
        metavar="STORED",
        help="a stored comparison's folder that --out's runs join (the same settings and "
        "seeds): --markdown prints the joined tables and whether the methods both ran agree",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="time every method's chosen configuration (--joined's and --out's) with one "
        "thread, a few epochs each, into OUT/<setting>/cost.csv",
    )
    parser.add_argument("--cost-epochs", type=int, default=4, help="epochs per timing run")
    parser.add_argument(
        "--figure", help="with --markdown and --joined: write the cost figure (.png) here"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        parser.error(
            f"unknown setting(s) {', '.join(unknown) or '(none)'}; known: {', '.join(SETTINGS)}"
        )
    subset = None
    if args.methods is not None:
        subset = [m.strip() for m in args.methods.split(",") if m.strip()]
        missing = sorted(
            {m for n in names for m in subset if m not in setting_values(n)["methods"]}
        )
        if missing or not subset:
            parser.error(
                f"--methods: {', '.join(missing) or '(none given)'} not in the settings' "
                f"methods; known: {', '.join(METHODS)}"
            )
    if (args.cost or args.figure) and not args.joined:
        parser.error("--cost and --figure need --joined STORED")
    if args.joined and not (args.cost or args.markdown):
        parser.error("--joined goes with --markdown (the joined tables) or --cost")
    if args.figure and not args.markdown:
        parser.error("--figure goes with --markdown --joined STORED")
    if args.cost:
        for name in names:
            path = write_cost(Path(args.joined), Path(args.out), name, args.cost_epochs)
            print(f"== {name}: {path}")
            print(path.read_text(), flush=True)
        return
    if args.markdown and args.joined:
        for name in names:
            print(joined_markdown(Path(args.joined), Path(args.out), name))
        if args.figure:
            print(f"figure: {write_figure(Path(args.joined), Path(args.out), names, args.figure)}")
        return
    if args.markdown:
        for name in names:
            print(markdown(Path(args.out), name))
        return
    for name in names:
        values = setting_values(name, subset)
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
