"""Command line: ``python -m gradreg train | preflight | compare | predict | data``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gradreg.cli.compare import add_compare_arguments, run_compare
from gradreg.cli.options import (
    add_code_argument,
    add_data_and_model_arguments,
    code_of,
    key_values,
    model_options,
    name_or_entry_point,
    progress,
    say_written,
)
from gradreg.cli.predict import add_predict_arguments, run_predict
from gradreg.config import TrainConfig
from gradreg.curvature.fisher import ESTIMATORS
from gradreg.curvature.precision import TF32_SETTINGS
from gradreg.data import available_datasets, load_dataset
from gradreg.data.splits import DEFAULT_TEST_FRACTION
from gradreg.families import VARIANCE_FAMILIES
from gradreg.methods import (
    DEFAULT_LR,
    METHODS,
    PREDICT_MODES,
    PRIOR_FITS,
    REGULARISER_GRADS,
    TRAINERS,
)
from gradreg.user_code import is_entry_point
from gradreg.version import add_version_argument

TABLE_METRICS = ("accuracy", "nll", "ece", "aece", "brier")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    data, _ = add_data_and_model_arguments(p)
    data.add_argument("--split-seed", type=int, default=defaults.split_seed)
    data.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    data.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help=f"default {DEFAULT_TEST_FRACTION}; datasets with an official test split use it "
        "instead",
    )
    vl = p.add_argument_group("method and posterior")
    vl.add_argument(
        "--method",
        default=defaults.method,
        choices=TRAINERS,
        help="vl (Variational Laplace), map, mcvi (sampling VI), laplace (post hoc) or ivon "
        "(IVON, variational online Newton)",
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
    vl.add_argument(
        "--regulariser-grad",
        choices=REGULARISER_GRADS,
        help="vl: the regulariser's μ-gradient by autograd (a double backward) or a finite "
        "difference (fisher sampled only); default auto: finite difference on CUDA in fp32",
    )
    vl.add_argument(
        "--mc-samples", type=int, help="mcvi and ivon: weight samples per step (default 1)"
    )
    ivon = METHODS["ivon"].defaults
    vl.add_argument(
        "--ess",
        type=float,
        help="ivon: effective sample size λ, σ² = 1/(λ(h + δ)) (default: training-set size / "
        "kl-weight); its weight decay is δ = 1/(λ · prior-variance)",
    )
    vl.add_argument(
        "--hess-init",
        type=float,
        help=f"ivon: initial Hessian estimate (default {ivon['hess_init']})",
    )
    vl.add_argument(
        "--beta1", type=float, help=f"ivon: momentum of the gradient (default {ivon['beta1']})"
    )
    vl.add_argument(
        "--beta2",
        type=float,
        help=f"ivon: momentum of the Hessian estimate (default {ivon['beta2']})",
    )
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
    own_lr = ", ".join(f"{m.name} {m.default_lr:g}" for m in METHODS.values() if "lr" in m.defaults)
    opt.add_argument(
        "--lr", type=float, help=f"step size (default: the method's, {DEFAULT_LR:g}; {own_lr})"
    )
    opt.add_argument("--variance-lr", type=float, help="default: 10 × lr")
    opt.add_argument("--epochs", type=int, default=defaults.epochs)
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size)
    opt.add_argument("--seed", type=int, default=defaults.seed)
    opt.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--bf16", action="store_true", help="bf16 autocast (Fisher kept in fp32)")
    opt.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (map, mcvi and ivon; vl and laplace refuse it)",
    )
    opt.add_argument(
        "--tf32",
        choices=TF32_SETTINGS,
        default=defaults.tf32,
        help="TF32 for float32 convolutions and matrix products on NVIDIA GPUs, for this run "
        "(default: as torch's flags are, convolutions only)",
    )
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
        dataset_options=key_values(args.dataset_option, "--dataset-option"),
        split_seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        model=args.model,
        model_options=model_options(args),
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
        regulariser_grad=args.regulariser_grad,
        ess=args.ess,
        hess_init=args.hess_init,
        beta1=args.beta1,
        beta2=args.beta2,
        lr=args.lr,
        variance_lr=args.variance_lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        predict=args.predict,
        n_samples=args.n_samples,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        compile=args.compile,
        tf32=args.tf32,
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
    from gradreg.artifacts import result_summary, write_run_artifacts
    from gradreg.train import EpochReport, fit

    config = config_from_args(args)
    with progress(config.epochs, "epochs", "epoch", args.quiet) as bar:

        def on_epoch(report: EpochReport) -> None:
            m = report.metrics
            bar.set_postfix(
                loss=f"{m['train_loss']:.4g}",
                val_acc=f"{m['val_accuracy']:.3f}",
                val_nll=f"{m['val_nll']:.3f}",
            )
            bar.update(1)

        result = fit(config, on_epoch)
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
    say_written(written, args.out)
    return 0


def _run_preflight(args: argparse.Namespace) -> int:
    from gradreg.preflight import describe, preflight

    if args.out:
        raise ValueError("preflight writes no files; drop --out")
    report = preflight(config_from_args(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(describe(report))
    return 0


def _run_data(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        for name, description in sorted(available_datasets().items()):
            print(f"{name:<14} {description}")
        return 0
    if args.data_command == "download":
        from gradreg.data.downloader import DownloadError, download
        from gradreg.data.standard_files import resolve_data_dir

        try:
            paths = download(args.name, resolve_data_dir(args.dir), base_url=args.mirror)
        except DownloadError as error:
            print(f"gradreg: {error}", file=sys.stderr)
            return 1
        print(f"{args.name}: {len(paths)} files under {resolve_data_dir(args.dir)}")
        return 0
    if args.dir and is_entry_point(args.name):
        raise ValueError(
            "--dir is for gradreg's datasets; give your loader's options with --option"
        )
    options = {"data_dir": args.dir} if args.dir else {}
    options.update(key_values(args.option, "--option"))
    file_options = {"path": args.path, "format": args.format, "label": args.label}
    if args.name == "file":
        options.update({key: value for key, value in file_options.items() if value is not None})
    elif any(value is not None for value in file_options.values()):
        raise ValueError("--path, --format and --label are for the file dataset")
    data = load_dataset(args.name, split_seed=args.split_seed, **options)
    print(json.dumps(data.summary(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradreg", description="Variational Laplace for Bayesian neural networks"
    )
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one model and report calibration")
    _add_train_arguments(train)
    check = commands.add_parser(
        "preflight",
        help="try a training run's settings in seconds: data, model, one forward pass, the "
        "Fisher against the layers, one step (what a sweep checks before its first trial)",
    )
    _add_train_arguments(check)
    compare = commands.add_parser(
        "compare", help="VL against MAP, sampling VI and Laplace over several seeds"
    )
    add_compare_arguments(compare)
    predict = commands.add_parser(
        "predict", help="class probabilities, predicted class and entropy from a saved model"
    )
    add_predict_arguments(predict)
    data = commands.add_parser("data", help="list or inspect the offline datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="the datasets and what they are")
    show = data_commands.add_parser("show", help="sizes, classes and shape of one dataset")
    show.add_argument(
        "name",
        type=name_or_entry_point("dataset", available_datasets()),
        metavar="NAME",
        help="a dataset's name, or your own loader package.module:function (with --code DIR)",
    )
    show.add_argument("--split-seed", type=int, default=0)
    show.add_argument(
        "--dir", help="data directory of a file dataset (mnist, fashion_mnist, cifar10, file)"
    )
    show.add_argument(
        "--path", help="file: a .npz, .csv, .parquet or image folder, relative to the data dir"
    )
    show.add_argument("--format", help="file: npz, csv, parquet or image_folder (default: guessed)")
    show.add_argument("--label", help="file: a table's label column (default label)")
    show.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, e.g. n_samples=2000 or your loader's (repeatable)",
    )
    add_code_argument(show)
    from gradreg.data.downloader import downloadable
    from gradreg.data.standard_files import DATA_DIR_ENV

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
        if args.command == "predict":  # it puts --code on the path itself (sweeps predict too)
            return run_predict(args)
        with code_of(args):
            if args.command == "train":
                return _run_train(args)
            if args.command == "preflight":
                return _run_preflight(args)
            if args.command == "compare":
                return run_compare(args)
            return _run_data(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"gradreg: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"gradreg: {error}", file=sys.stderr)
        return 1
