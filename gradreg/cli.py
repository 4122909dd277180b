"""Command line: ``python -m gradreg train | data``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from gradreg.config import TrainConfig
from gradreg.data import available_datasets, load_dataset
from gradreg.fisher import ESTIMATORS
from gradreg.methods import METHODS, PREDICT_MODES, PRIOR_FITS, TRAINERS, VARIANCE_FAMILIES
from gradreg.models import available_models

TABLE_METRICS = ("accuracy", "nll", "ece", "aece", "brier")


def parse_option_value(text: str) -> Any:
    """'3' → 3, '0.5' → 0.5, 'true' → True, '128,128' → [128, 128], else the string."""
    if "," in text:
        return [parse_option_value(part) for part in text.split(",") if part]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        options[key] = parse_option_value(value)
    return options


def _add_data_and_model_arguments(
    p: argparse.ArgumentParser,
) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    defaults = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=defaults.dataset,
        choices=sorted(available_datasets()),
        metavar="NAME",
        help="one of: %(choices)s",
    )
    data.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_samples=2000 or data_dir=/data (repeatable)",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        default=defaults.model,
        choices=sorted(available_models()),
        metavar="NAME",
        help="one of: %(choices)s",
    )
    model.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        metavar="WIDTH",
        help="hidden widths of the mlp, e.g. --hidden 128 128",
    )
    model.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. channels=16,32 or width=16 (repeatable)",
    )
    return data, model


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = _key_values(args.model_option, "--model-option")
    if args.hidden is not None:
        options["hidden"] = list(args.hidden)
    return options


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    data, _ = _add_data_and_model_arguments(p)
    data.add_argument("--split-seed", type=int, default=defaults.split_seed)
    data.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    data.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="default 0.2; datasets with an official test split use it instead",
    )
    vl = p.add_argument_group("method and posterior")
    vl.add_argument(
        "--method",
        default=defaults.method,
        choices=TRAINERS,
        help="vl (Variational Laplace), map, mcvi (sampling VI) or laplace (post hoc)",
    )
    vl.add_argument(
        "--variance",
        choices=VARIANCE_FAMILIES,
        help="vl and mcvi: posterior variance family (default diagonal)",
    )
    vl.add_argument("--noise-scale", type=float, help="σ of every weight (uniform variance)")
    vl.add_argument("--learn-noise-scale", action="store_true")
    vl.add_argument("--init-variance", type=float, help="starting σ² (diagonal variance)")
    vl.add_argument("--prior-variance", type=float, default=defaults.prior_variance)
    vl.add_argument("--kl-weight", type=float, default=defaults.kl_weight)
    vl.add_argument(
        "--fisher",
        choices=ESTIMATORS,
        help="vl: estimator in the objective (default sampled); laplace: default exact",
    )
    vl.add_argument("--mc-samples", type=int, help="mcvi: weight samples per step (default 1)")
    vl.add_argument(
        "--prior-fit",
        choices=PRIOR_FITS,
        help="laplace: how the prior precision is chosen after training (default val_nll)",
    )
    vl.add_argument(
        "--empirical-fisher",
        action="store_true",
        help="use the true labels in the Fisher instead of model samples",
    )
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=defaults.lr)
    opt.add_argument("--variance-lr", type=float, help="default: 10 × lr")
    opt.add_argument("--epochs", type=int, default=defaults.epochs)
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size)
    opt.add_argument("--seed", type=int, default=defaults.seed)
    opt.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--bf16", action="store_true", help="bf16 autocast (Fisher kept in fp32)")
    ev = p.add_argument_group("evaluation and output")
    ev.add_argument(
        "--predict",
        choices=PREDICT_MODES,
        help="the predictive of the val/test metrics (default: the method's own, e.g. sample "
        "for vl, glm_probit for laplace)",
    )
    ev.add_argument(
        "--n-samples",
        type=int,
        default=defaults.n_samples,
        help="weight samples for --predict sample",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ev.add_argument("--out", metavar="DIR", help="write metrics, history and reliability diagram")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset,
        dataset_options=_key_values(args.dataset_option, "--dataset-option"),
        split_seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        model=args.model,
        model_options=_model_options(args),
        method=args.method,
        variance=args.variance,
        noise_scale=args.noise_scale,
        learn_noise_scale=args.learn_noise_scale,
        init_variance=args.init_variance,
        prior_variance=args.prior_variance,
        kl_weight=args.kl_weight,
        fisher=args.fisher,
        empirical_fisher=args.empirical_fisher,
        mc_samples=args.mc_samples,
        prior_fit=args.prior_fit,
        lr=args.lr,
        variance_lr=args.variance_lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        predict=args.predict,
        n_samples=args.n_samples,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
    )


def describe_method(config: TrainConfig) -> str:
    details = []
    if config.variance:
        details.append(f"{config.variance} variance")
    if config.fisher:
        details.append(f"{config.fisher} Fisher")
    if config.mc_samples:
        details.append(f"{config.mc_samples} samples/step")
    return config.method + (f" ({', '.join(details)})" if details else "")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Rows are splits (val, test), columns the calibration metrics."""
    header = f"{'split':<6}" + "".join(f"{m:>10}" for m in TABLE_METRICS)
    lines = [header, "-" * len(header)]
    for split, values in rows.items():
        lines.append(f"{split:<6}" + "".join(f"{values[m]:>10.4f}" for m in TABLE_METRICS))
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gradreg.artifacts import result_summary, write_run_artifacts
    from gradreg.train import fit

    config = config_from_args(args)
    bar = tqdm(
        total=config.epochs,
        desc="epochs",
        unit="epoch",
        disable=args.quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def on_epoch(report) -> None:
        m = report.metrics
        bar.set_postfix(
            loss=f"{m['train_loss']:.4g}",
            val_acc=f"{m['val_accuracy']:.3f}",
            val_nll=f"{m['val_nll']:.3f}",
        )
        bar.update(1)

    try:
        result = fit(config, on_epoch)
    finally:
        bar.close()
    written = write_run_artifacts(result, args.out) if args.out else []
    if args.json:
        summary = result_summary(result)
        summary["files"] = [str(p) for p in written]
        print(json.dumps(summary, indent=2, default=str))
        return 0
    final = result.metrics
    rows = {s: {m: final[f"{s}_{m}"] for m in TABLE_METRICS} for s in ("val", "test")}
    print(
        f"{describe_method(config)} on {config.dataset} with {config.model}, "
        f"{len(result.history)} epochs, {config.predict} predictive"
    )
    print(format_table(rows))
    if written:
        print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def _run_data(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        for name, description in sorted(available_datasets().items()):
            print(f"{name:<14} {description}")
        return 0
    if args.data_command == "download":
        from gradreg.datafiles import DownloadError, download, resolve_data_dir

        try:
            paths = download(args.name, resolve_data_dir(args.dir), base_url=args.mirror)
        except DownloadError as error:
            print(f"gradreg: {error}", file=sys.stderr)
            return 1
        print(f"{args.name}: {len(paths)} files under {resolve_data_dir(args.dir)}")
        return 0
    options = {"data_dir": args.dir} if args.dir else {}
    data = load_dataset(args.name, split_seed=args.split_seed, **options)
    print(json.dumps(data.summary(), indent=2))
    return 0


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


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    from gradreg.compare import CompareSpec

    defaults = CompareSpec()
    _add_data_and_model_arguments(p)
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
    p.add_argument("--lr", type=float, default=defaults.lr)
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
    p.add_argument("--val-fraction", type=float, help="default: the dataset's (0.15)")
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--out", metavar="DIR", help="write CSV, JSON and reliability diagrams")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_compare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gradreg.compare import CompareSpec, plan_size, run_comparison
    from gradreg.compare_report import (
        format_paired,
        format_summary,
        json_safe,
        paired_rows,
        summary_rows,
        write_comparison,
    )

    spec = CompareSpec(
        dataset=args.dataset,
        dataset_options=_key_values(args.dataset_option, "--dataset-option"),
        model=args.model,
        model_options=_model_options(args),
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        seeds=args.seeds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        n_samples=args.n_samples,
        fisher=args.fisher,
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
    bar = tqdm(
        total=plan_size(spec),
        desc="runs",
        unit="run",
        disable=args.quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        comparison = run_comparison(spec, tick)
    finally:
        bar.close()
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
    if written:
        print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradreg", description="Variational Laplace for Bayesian neural networks"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one model and report calibration")
    _add_train_arguments(train)
    compare = commands.add_parser(
        "compare", help="VL against MAP, sampling VI and Laplace over several seeds"
    )
    _add_compare_arguments(compare)
    data = commands.add_parser("data", help="list or inspect the offline datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="the datasets and what they are")
    show = data_commands.add_parser("show", help="sizes, classes and shape of one dataset")
    show.add_argument("name", choices=sorted(available_datasets()), metavar="NAME")
    show.add_argument("--split-seed", type=int, default=0)
    show.add_argument(
        "--dir", help="data directory of a file dataset (mnist, fashion_mnist, cifar10)"
    )
    from gradreg.datafiles import DATA_DIR_ENV, downloadable

    fetch = data_commands.add_parser(
        "download", help="fetch a file dataset (needs internet; offline: says what to place where)"
    )
    fetch.add_argument("name", choices=downloadable(), metavar="NAME", help="one of: %(choices)s")
    fetch.add_argument("--dir", help=f"data directory (default ${DATA_DIR_ENV} or ./data)")
    fetch.add_argument("--mirror", help="base URL of a mirror holding the same files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "compare":
            return _run_compare(args)
        return _run_data(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"gradreg: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"gradreg: {error}", file=sys.stderr)
        return 1
