"""``python -m gradreg compare``: its arguments and its run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from gradreg.cli.options import (
    add_data_and_model_arguments,
    key_values,
    model_options,
    parse_option_value,
    progress,
    say_written,
)
from gradreg.curvature.fisher import ESTIMATORS
from gradreg.data.splits import DEFAULT_VAL_FRACTION
from gradreg.methods import DEFAULT_LR, METHODS, REGULARISER_GRADS


def _method_settings(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, value = pair.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(
                f"--set takes METHOD.KEY=VALUE (e.g. vl-uniform.noise_scale=0.02), got {pair!r}"
            )
        settings.setdefault(method, {})[key] = parse_option_value(value)
    return settings


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    from gradreg.comparison.runs import CompareSpec

    defaults = CompareSpec()
    add_data_and_model_arguments(p)
    p.add_argument(
        "--methods",
        default=",".join(defaults.methods),
        help=f"comma-separated, default %(default)s; from: {', '.join(METHODS)}",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=defaults.seeds,
        help="seeds 0..N-1; seed s fixes both the split and the initialisation",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    own_lr = ", ".join(f"{m.name} {m.default_lr:g}" for m in METHODS.values() if "lr" in m.defaults)
    p.add_argument(
        "--lr",
        type=float,
        default=defaults.lr,
        help=f"every method's step size (default: each method's own, {DEFAULT_LR:g}; {own_lr})",
    )
    p.add_argument(
        "--n-samples",
        type=int,
        default=defaults.n_samples,
        help="weight samples for the sample predictive",
    )
    p.add_argument(
        "--fisher",
        choices=ESTIMATORS,
        help="Fisher estimator for vl-* and laplace (default: each method's own)",
    )
    p.add_argument(
        "--regulariser-grad",
        choices=REGULARISER_GRADS,
        help="vl-*: the regulariser's μ-gradient by autograd or finite_difference (default auto)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a hyperparameter for one method, e.g. vl-uniform.noise_scale=0.02",
    )
    p.add_argument(
        "--search",
        action="store_true",
        help="choose each method's settings from its grid by seed-0 validation NLL",
    )
    p.add_argument(
        "--search-budget",
        type=int,
        default=0,
        metavar="N",
        help="instead: N random points of each method's own space (the same N for every method)",
    )
    p.add_argument(
        "--early-stopping",
        action="store_true",
        help="the search also picks the epoch count, by the best epoch's validation NLL",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="add a K-member deep ensemble row per method (K initialisation seeds per split)",
    )
    p.add_argument(
        "--hyper-ensemble",
        type=int,
        default=0,
        metavar="K",
        help="add a row per method ensembling the search's K best configurations",
    )
    p.add_argument(
        "--ensemble-of", metavar="METHODS", help="comma-separated: only these get ensemble rows"
    )
    p.add_argument(
        "--val-fraction", type=float, help=f"default: the dataset's ({DEFAULT_VAL_FRACTION})"
    )
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--out", metavar="DIR", help="write CSV, JSON and reliability diagrams")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_compare(args: argparse.Namespace) -> int:
    from gradreg.comparison.report import (
        format_paired,
        format_summary,
        json_safe,
        paired_rows,
        summary_rows,
        write_comparison,
    )
    from gradreg.comparison.runs import CompareSpec, plan_size, run_comparison

    spec = CompareSpec(
        dataset=args.dataset,
        dataset_options=key_values(args.dataset_option, "--dataset-option"),
        model=args.model,
        model_options=model_options(args),
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seeds=args.seeds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        n_samples=args.n_samples,
        fisher=args.fisher,
        regulariser_grad=args.regulariser_grad,
        overrides=_method_settings(args.set),
        search=args.search,
        search_budget=args.search_budget,
        early_stopping=args.early_stopping,
        ensemble=args.ensemble,
        hyper_ensemble=args.hyper_ensemble,
        ensemble_of=[m.strip() for m in args.ensemble_of.split(",")] if args.ensemble_of else None,
        val_fraction=args.val_fraction,
        device=args.device,
    )
    with progress(plan_size(spec), "runs", "run", args.quiet) as bar:

        def tick(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        comparison = run_comparison(spec, tick)
    written = write_comparison(comparison, args.out) if args.out else []
    if args.json:
        print(
            json.dumps(
                json_safe(
                    {
                        "chosen_hyperparameters": comparison.chosen,
                        "summary": summary_rows(comparison),
                        "paired": paired_rows(comparison),
                        "files": [str(p) for p in written],
                    }
                ),
                indent=2,
            )
        )
        return 0
    selection = "chosen by seed-0 validation NLL" if spec.searching else "given"
    if spec.early_stopping:
        selection += ", epochs by early stopping"
    print(
        f"{spec.dataset} with {spec.model}: {spec.seeds} seeds × {spec.epochs} epochs; "
        f"test metrics, mean ± standard error over seeds; hyperparameters {selection}"
    )
    for method, values in comparison.chosen.items():
        if values:
            print(f"  {method}: {', '.join(f'{k}={v}' for k, v in values.items())}")
    print(format_summary(comparison))
    print()
    print(format_paired(comparison))
    say_written(written, args.out)
    return 0
