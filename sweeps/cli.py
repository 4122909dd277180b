"""python -m sweeps run | resume | validate | schema | ensemble | predict | stop"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from urllib.parse import urlsplit

from gradreg.cli.predict import add_predict_arguments, run_predict
from gradreg.version import add_version_argument, interruptible
from sweeps import (
    DirectoryStore,
    DriverOptions,
    SpecError,
    SweepOutcome,
    SweepSpec,
    TrialSummary,
    load_spec_file,
    resume_sweep,
    run_stored,
    run_sweep,
)
from sweeps.code import CodeBundle
from sweeps.driver import ensemble_sweep, stored_bundle
from sweeps.mlflow_ui import run_url, runs_url
from sweeps.spec.budget import EXTENDABLE

TABLE_METRICS = ("test_accuracy", "test_nll", "test_ece")
ENSEMBLE_METRICS = ("accuracy", "nll", "ece", "brier")
# Where `mlflow ui` serves a local store unless told otherwise.
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"
# A stopped sweep (Ctrl-C or SIGTERM once, or `stop`) exits 0: its state is saved and
# `resume` finishes it. Only a KeyboardInterrupt that gets through (a second Ctrl-C, or one
# before the driver runs) is 130.
EXIT_SWEEP_FAILED = 1
EXIT_INVALID = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return interruptible("sweeps", lambda: _handle(args))


def _handle(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__)
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a sweep from a spec file, or by id from a store")
    run.add_argument("spec", nargs="?", help="YAML or JSON sweep spec")
    run.add_argument("--sweep-id", help="run the sweep with this id from --store instead")
    run.add_argument("--store", help="directory store that holds --sweep-id")
    run.add_argument(
        "--code",
        metavar="DIR",
        help="a directory of your own code (the spec's entry points): packed, kept beside the "
        "sweep's state and shipped to every trial as its Ray runtime environment",
    )
    _driver_options(run)
    run.set_defaults(handler=_run)

    resume = commands.add_parser(
        "resume",
        help="continue an interrupted sweep by name, or extend a finished one with more budget",
    )
    resume.add_argument("name")
    extension = resume.add_argument_group(
        "extension", "raise the budget first (only raises; the caps apply)"
    )
    extension.add_argument("--max-trials", type=int, help="trials in all, earlier ones included")
    extension.add_argument("--time-budget-s", type=float, help="seconds for this attempt")
    extension.add_argument("--max-failed-trials", type=int)
    _driver_options(resume)
    resume.set_defaults(handler=_resume)

    validate = commands.add_parser("validate", help="check spec files without running them")
    validate.add_argument("specs", nargs="+")
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser("schema", help="print the spec's JSON Schema")
    schema.set_defaults(handler=_schema)

    ensemble = commands.add_parser(
        "ensemble", help="build the ensemble of a sweep's best trials again (logged in MLflow)"
    )
    ensemble.add_argument("name")
    ensemble.add_argument("--size", type=int, help="members (default: the spec's ensemble.size)")
    ensemble.add_argument("--selection", choices=("top", "greedy"), help="default: the spec's")
    _driver_options(ensemble)
    ensemble.set_defaults(handler=_ensemble)

    predict = commands.add_parser(
        "predict", help="class probabilities, predicted class and entropy from an MLflow model"
    )
    add_predict_arguments(
        predict, "an MLflow model: models:/NAME/VERSION, runs:/RUN_ID/model or a directory"
    )
    predict.add_argument(
        "--tracking-uri",
        help="MLflow server or store of the model (default: MLflow's own, $MLFLOW_TRACKING_URI)",
    )
    predict.set_defaults(handler=_predict)

    stop = commands.add_parser("stop", help="ask a stored sweep to stop (it stays resumable)")
    stop.add_argument("--sweep-id", required=True)
    stop.add_argument("--store", required=True)
    stop.set_defaults(handler=_stop)
    return parser


def _predict(args: argparse.Namespace) -> int:
    # MLflow's model code, only for this command
    from sweeps.model import carried_code, download_posterior

    with tempfile.TemporaryDirectory() as tmp:
        posterior = download_posterior(args.model_uri, tmp, tracking_uri=args.tracking_uri)
        local = argparse.Namespace(**{**vars(args), "model_uri": str(posterior)})
        # A model of the user's own network carries its code: on the path for the command,
        # unless --code names another directory.
        if not args.code and (code := carried_code(posterior)) is not None:
            local.code = str(code)
        return run_predict(local)


def _driver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", help="Ray cluster address (default: a local instance)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in var/)")
    parser.add_argument("--storage-path", help="Tune storage path or URI (default: var/)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _options(args: argparse.Namespace) -> DriverOptions:
    return DriverOptions(
        ray_address=args.ray_address,
        tracking_uri=args.tracking_uri,
        storage_path=args.storage_path,
        quiet=args.quiet,
    )


def _run(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.sweep_id is None):
        raise ValueError("give a spec file or --sweep-id (with --store), not both")
    if args.sweep_id is not None:
        if not args.store:
            raise ValueError("--sweep-id needs --store DIR")
        if args.code:
            raise ValueError("--code goes with a spec file; a stored sweep names its code itself")
        outcome = run_stored(args.sweep_id, DirectoryStore(args.store), _options(args))
    else:
        spec = load_spec_file(args.spec)
        options = _options(args)
        if args.code:
            options = dataclasses.replace(options, code=CodeBundle.pack(args.code))
        elif spec.code.digest is not None:
            raise ValueError(
                f"the spec names the code bundle {spec.code.digest} (code.digest, set when it "
                "was sent to a service); give its directory with --code DIR"
            )
        outcome = run_sweep(spec, options)
    return _finish(outcome, args.json)


def _resume(args: argparse.Namespace) -> int:
    # A sweep started with --code resumes with the same bundle, kept beside its state,
    # whatever the code directory holds now.
    options = _options(args)
    options = dataclasses.replace(options, code=stored_bundle(args.name, options))
    extend = {name: value for name in EXTENDABLE if (value := getattr(args, name)) is not None}
    return _finish(resume_sweep(args.name, options, extend=extend or None), args.json)


def _ensemble(args: argparse.Namespace) -> int:
    ensemble = ensemble_sweep(args.name, _options(args), size=args.size, selection=args.selection)
    if args.json:
        print(json.dumps(ensemble.summary(), indent=2, default=str))
    else:
        print(format_ensemble(ensemble.summary()))
    return 0 if ensemble.members else EXIT_SWEEP_FAILED


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.specs:
        try:
            spec = load_spec_file(path)
        except (ValueError, OSError) as error:  # SpecError, or a file that cannot be read
            print(f"{path}: {error}", file=sys.stderr)
            status = EXIT_INVALID
        else:
            print(f"{path}: ok ({spec.name}, {len(spec.parameters)} searched parameter(s))")
    return status


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def _stop(args: argparse.Namespace) -> int:
    DirectoryStore(args.store).request_stop(args.sweep_id)
    print(f"stop requested for {args.sweep_id}; it finishes its current step and saves state")
    return 0


def _finish(outcome: SweepOutcome, as_json: bool) -> int:
    if as_json:
        print(json.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        print(format_outcome(outcome))
    return 0 if outcome.status in ("succeeded", "stopped") else EXIT_SWEEP_FAILED


def format_outcome(outcome: SweepOutcome, top: int = 5) -> str:
    """A short report: status, counts, and a table of the best trials."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(outcome.counts().items()))
    lines = [f"sweep {outcome.sweep}: {outcome.status} ({outcome.reason}); trials: {counts}"]
    for report in outcome.preflight or []:
        lines.append(_preflight_line(report))
    objectives = [o["metric"] for o in outcome.objectives]
    if len(objectives) > 1:
        lines.append(f"Pareto set over {', '.join(objectives)} ({len(outcome.best)} trials):")
        shown = outcome.best
    else:
        shown = outcome.ranked()[:top]
        lines.append(f"best trials by {objectives[0]}:")
    lines.append(_table(shown, objectives))
    if outcome.ensemble is not None:
        lines.append(format_ensemble(outcome.ensemble))
    lines.append(
        f"MLflow: {outcome.tracking_uri} experiment {outcome.experiment_id}, "
        f"parent run {outcome.parent_run_id}"
    )
    lines.extend(_ui_links(outcome))
    registered = outcome.registered_model
    if registered is not None:
        lines.append(
            f"registered model: not registered ({registered['error']})"
            if "error" in registered
            else f"registered model: {registered['uri']} (mlflow models serve -m "
            f"{registered['uri']}, or python -m sweeps predict --model-uri {registered['uri']})"
        )
    lines.append(f"Tune state: {outcome.experiment_path}")
    return "\n".join(lines)


def _preflight_line(report: dict) -> str:
    """One settings' passed preflight, in a line of the report."""
    shown = ", ".join(f"{k}={v}" for k, v in report.get("values", {}).items())
    megabytes = int(report["step_memory_bytes"]) / 2**20
    return (
        f"preflight: {report['model']} on {report['dataset']} ({report['method']}"
        f"{'; ' + shown if shown else ''}): {int(report['n_parameters']):,} parameters, "
        f"one step {megabytes:.1f} MiB, input {tuple(report['input_shape'])}, "
        f"{report['n_classes']} classes"
    )


def _ui_links(outcome: SweepOutcome) -> list[str]:
    """Where to see the sweep in the MLflow UI: its runs, its parent run and its best trials.

    A tracking server serves its UI at the tracking URI; a local store is browsed with
    `mlflow ui`, at that command's default address.
    """
    ui = outcome.tracking_uri
    lines = []
    if urlsplit(ui).scheme not in ("http", "https"):
        ui = MLFLOW_UI_DEFAULT
        lines.append(f"  browse it: mlflow ui --backend-store-uri {outcome.tracking_uri}")
    lines.append(f"  runs: {runs_url(ui, outcome.experiment_id)}")
    lines.append(f"  parent run: {run_url(ui, outcome.experiment_id, outcome.parent_run_id)}")
    for trial in outcome.best:
        if trial.mlflow_run_id:
            url = run_url(ui, outcome.experiment_id, trial.mlflow_run_id)
            lines.append(f"  best trial {trial.name}: {url}")
    return lines


def format_ensemble(ensemble: dict) -> str:
    """The sweep ensemble's test metrics, raw and temperature-scaled, its members, and why it
    has fewer members than requested or an unfitted temperature, when it does."""
    if "error" in ensemble:
        return f"sweep ensemble: not built ({ensemble['error']})"
    note = ensemble.get("note")  # absent from ensembles stored before it existed
    if not ensemble["members"]:
        skipped = len(ensemble.get("skipped", []))
        why = f": {note}" if note else ""
        return f"sweep ensemble: no finished trial with predictions ({skipped} skipped){why}"
    metrics = ensemble["metrics"]
    raw = ", ".join(f"{m} {metrics[f'test_{m}']:.4g}" for m in ENSEMBLE_METRICS)
    unfitted = ensemble.get("temperature_scaling")
    scaled = (
        "+TS not fitted (T = 1)"
        if unfitted
        else "+TS " + ", ".join(f"{m} {metrics[f'test_{m}_ts']:.4g}" for m in ENSEMBLE_METRICS[1:])
    )
    members = ", ".join(f"{m['name']} ({m['weight']:.2g})" for m in ensemble["members"])
    size = len(ensemble["members"])
    requested = ensemble.get("requested")
    asked = f" ({requested} requested)" if requested is not None and requested != size else ""
    lines = [
        f"sweep ensemble ({ensemble['selection']}, {size} member{'' if size == 1 else 's'}"
        f"{asked} from {ensemble['candidates']} finished trials): test {raw} | {scaled}",
        f"  members: {members}",
    ]
    if note:
        lines.append(f"  note: {note}")
    if unfitted:
        lines.append(f"  temperature scaling {unfitted}")
    return "\n".join(lines)


def _table(trials: list[TrialSummary], objectives: list[str]) -> str:
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    metrics = list(dict.fromkeys([*objectives, *TABLE_METRICS]))
    header = ["trial", "state", *params, *metrics]
    rows = [
        [
            t.name,
            t.state,
            *(_cell(t.params.get(p)) for p in params),
            *(_cell(t.metrics.get(m)) for m in metrics),
        ]
        for t in trials
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
