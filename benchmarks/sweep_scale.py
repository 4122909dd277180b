"""What in a sweep grows with its number of trials: search, Tune's saved state, MLflow, driver.

    python benchmarks/sweep_scale.py                          # every part, full sizes (long)
    python benchmarks/sweep_scale.py --parts search tune_state parent_summary
    python benchmarks/sweep_scale.py --parts driver --driver-trials 200 2000
    python benchmarks/sweep_scale.py --json scale.json        # every figure, for a later diff

Each part times one thing at several sizes, in this run, and prints it with its ratio to the
part's smallest size (its baseline, measured in the same run):

search          Optuna's suggestion (``study.ask(distributions)`` + ``tell``) for each sampler
                `sweeps.space.make_sampler` builds from the digits-vl-uniform example spec, on
                a study filled with 100, 1,000 and 10,000 finished trials (``add_trials``; each
                has an intermediate value per epoch, as Tune's reports leave them). GP is timed
                at its own sizes (``--gp-trials``) and extrapolated to the others with the
                exponent fitted to them. Then what Tune does with that study at every save of
                the experiment state: `OptunaSearch.save_to_dir` (it pickles the whole study).
tune_state      One save of Tune's experiment state at 1,000 and 10,000 trials, with Ray 2.60's
                own objects: a `TuneController` holding N `Trial`s (each with its last result,
                metric analysis and checkpoints, and result.json written by the driver's
                `LatestResultLogger`), the driver's callbacks and an `OptunaSearch` whose study
                holds N trials. Timed: `TuneController.save_to_dir` (the driver's loop waits for
                it; split into trials' JSON, the state file, the searcher and the callbacks'
                state) after the ``--tune-running`` running trials reported once more, and the
                background upload of the staging directory that follows each save. Its share of
                the driver's time: save / (period + save), at the old fixed 1 s period and at
                the period `sweeps.checkpoints.adaptive_state_saves` sets now (1 s, or 20x the
                save once that is longer).
parent_summary  `Tracker.finish_sweep` with an outcome of N trial summaries (MLflow on SQLite).
driver          A real sweep of instant trials (they report ``--driver-epochs`` epochs of made-up
                metrics and a checkpoint, no training, no MLflow run) through `run_stored` and
                the service's `DatabaseSweepStore` on SQLite, each size in a fresh driver
                process (the service runs every driver as its own Ray job) connected to the one
                Ray instance: time per trial (first trial's start to last trial's end, as the
                driver handed them to the store: `SweepMonitor.update`), the driver's CPU time
                per trial, the time each call into the driver's Tune callback takes
                (`SweepCallback`: the driver's Tune loop waits for it), the store's writes,
                Tune's saves as they happened, and the driver process's peak RSS (sampled).
                The trials never call MLflow; the driver still opens and closes the sweep's
                parent run.
store           The service's store on SQLite and PostgreSQL, a sweep of 100, 1,000 and 10,000
                trials: one trial report (its own transaction, as `DatabaseSweepStore`
                writes it), a report in a batch of 50 (the driver's writer batches), the
                write before migration 0003 (row lock + scan of every trial) as the baseline;
                a /trials page of 50 (first, from the middle, top 50 by val_nll), /best, and
                a follower's events poll, through the API's own routes in-process.

Sizes are options (see --help) so that a smoke test runs every part in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import optuna
import ray
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import problems
from service.routes.sweeps import event_payloads
from service.routes.sweeps import router as sweeps_router
from service.settings import ServiceSettings
from service.store import repository
from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.models import Trial
from service.store.sweep_store import DatabaseSweepStore, TrialWrite, write_trials
from sweeps.checkpoints import MIN_STATE_SAVE_PERIOD_S, STATE_SAVE_SHARE
from sweeps.records import (
    BINS_KEY,
    SweepOutcome,
    TrialEvent,
    TrialSummary,
    best_trials,
    reported_metrics,
)
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec import Objective, SweepSpec
from sweeps.spec.checks import GP_MAX_TRIALS
from sweeps.spec.limits import Limits
from sweeps.spec.parse import parse_spec, read_document

PARTS = ("search", "tune_state", "parent_summary", "driver", "store")
SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")
TRIAL_CALLBACKS = tuple(
    f"callback.{name}"
    for name in (
        "on_trial_start",
        "on_trial_result",
        "on_trial_complete",
        "on_trial_error",
        "on_trial_recover",
    )
)
EXAMPLE = Path(__file__).resolve().parents[1] / "sweeps" / "examples" / "digits-vl-uniform.yaml"
GLOBAL_CHECKPOINT_S = 1.0  # the driver's fixed period before adaptive_state_saves
N_BINS = 15


# ---------------------------------------------------------------- made-up trials


def example_document(**changes: Any) -> dict[str, Any]:
    """The digits-vl-uniform example spec, with top-level sections replaced by ``changes``."""
    document = read_document(EXAMPLE.read_text())
    document.update(changes)
    return document


def search_spec(algorithm: str, max_trials: int) -> SweepSpec:
    search = {"algorithm": algorithm, "seed": 0, "n_startup_trials": 10}
    if algorithm == "gp":  # a spec refuses more (the sampler itself does not read the budget)
        max_trials = min(max_trials, GP_MAX_TRIALS)
    budget = {"max_trials": max_trials, "max_concurrent_trials": 4}
    return parse_spec(example_document(search=search, budget=budget), Limits(max_trials=max_trials))


def quality(params: dict[str, Any]) -> float:
    """A smooth validation NLL over the usual (noise_scale, prior_variance) plane."""
    noise = math.log10(params.get("noise_scale", 0.01)) + 2.0
    prior = math.log10(params.get("prior_variance", 1.0))
    return 0.1 + 0.05 * noise**2 + 0.03 * prior**2


def epoch_metrics(epoch: int, epochs: int, base: float, rng: random.Random) -> dict[str, Any]:
    """One epoch's report as a trial sends it to Tune: gradreg's metrics and the test bins."""
    progress = epoch / epochs
    val_nll = base + 0.4 * (1.0 - progress) + rng.gauss(0.0, 0.005)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": val_nll * 0.9 + 0.01,
        "train_nll": val_nll * 0.85,
        "train_sqgrad": rng.uniform(0.1, 1.0),
        "train_kl": rng.uniform(0.01, 0.1),
        "train_seconds": rng.uniform(0.5, 2.0),
        "posterior_std_mean": rng.uniform(0.001, 0.1),
    }
    for split in ("val", "test"):
        nll = val_nll if split == "val" else val_nll + rng.gauss(0.0, 0.01)
        metrics.update(
            {
                f"{split}_nll": nll,
                f"{split}_accuracy": max(0.0, 1.0 - nll / 2),
                f"{split}_ece": rng.uniform(0.005, 0.05),
                f"{split}_aece": rng.uniform(0.005, 0.05),
                f"{split}_brier": rng.uniform(0.02, 0.2),
            }
        )
    upper = [(k + 1) / N_BINS for k in range(N_BINS)]
    metrics[BINS_KEY] = {
        "lower": [k / N_BINS for k in range(N_BINS)],
        "upper": upper,
        "count": [rng.randrange(0, 60) for _ in range(N_BINS)],
        "confidence": [u - 0.5 / N_BINS for u in upper],
        "accuracy": [min(1.0, u - rng.uniform(0.0, 0.1)) for u in upper],
    }
    return metrics


def random_params(rng: random.Random) -> dict[str, float]:
    return {
        "noise_scale": 10 ** rng.uniform(-3, -1),
        "prior_variance": 10 ** rng.uniform(-2, 1),
    }


def make_instant_trial(epochs: int, checkpoint: bool) -> Callable[[dict[str, Any], Any], None]:
    """A Tune function trainable with `sweeps.trainable.run_trial`'s signature: it reports
    ``epochs`` epochs at once (and a checkpoint at the end, as a real trial does) and trains
    nothing. No MLflow run, so no ``mlflow_run_id`` in its reports."""

    def instant_trial(config: dict[str, Any], context: Any) -> None:
        from ray import tune

        rng = random.Random(json.dumps(config, sort_keys=True))
        base = quality(config)
        for epoch in range(1, epochs + 1):
            metrics = epoch_metrics(epoch, epochs, base, rng)
            if checkpoint and epoch == epochs:
                with tempfile.TemporaryDirectory() as tmp:
                    Path(tmp, "state.json").write_text(json.dumps({"epoch": epoch}))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                tune.report(metrics)

    return instant_trial


# ---------------------------------------------------------------- helpers


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or not baseline or math.isnan(baseline):
        return None
    return value / baseline


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.2f}"


def fitted_exponent(sizes: list[int], seconds: list[float]) -> tuple[float, float] | None:
    """(exponent b, log-intercept a) of the least-squares line log t = a + b log n."""
    points = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds, strict=True) if t > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return slope, mean_y - slope * mean_x


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Timings:
    """Seconds per call of wrapped methods, by label."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    @contextmanager
    def wrapped(
        self,
        owner: Any,
        name: str,
        label: str | None = None,
        observe: Callable[..., None] | None = None,
    ) -> Iterator[None]:
        """``owner.name`` timed while in the context; ``observe`` sees each call's arguments."""
        original = getattr(owner, name)
        samples = self.calls.setdefault(label or name, [])

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if observe is not None:
                observe(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - started)

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


# ---------------------------------------------------------------- search


def filled_searcher(
    algorithm: str, n: int, epochs: int, seed: int
) -> tuple[Any, dict[str, optuna.distributions.BaseDistribution]]:
    """The driver's `OptunaSearch` for ``algorithm`` whose study holds ``n`` finished trials,
    as Tune leaves them: one Optuna trial per Tune trial, an intermediate value per epoch."""
    from ray.tune.search.optuna import OptunaSearch

    spec = search_spec(algorithm, max(n, 1))
    sampler = make_sampler(spec)
    searcher = OptunaSearch(
        space=SearchSpace(spec),
        metric=spec.objectives[0].metric,
        mode="min",
        sampler=sampler,
    )
    study = searcher._ot_study
    distributions = SearchSpace(spec).distributions()
    population = getattr(sampler, "_population_size", None)
    generation_key = (
        sampler._get_generation_key() if hasattr(sampler, "_get_generation_key") else None
    )
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        params = random_params(rng)
        final = quality(params) + rng.gauss(0.0, 0.01)
        intermediate = {step: final + 0.4 * (1 - step / epochs) for step in range(1, epochs + 1)}
        system_attrs = {}
        if generation_key is not None and population:
            system_attrs[generation_key] = i // population  # the GA samplers' generations
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=final,
                intermediate_values=intermediate,
                system_attrs=system_attrs,
            )
        )
    study.add_trials(trials)
    # OptunaSearch keeps every Tune trial's Optuna trial (and pickles them all at each save).
    for frozen in study.get_trials(deepcopy=False):
        tune_id = f"{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}_{frozen.number:05d}"
        searcher._ot_trials[tune_id] = optuna.Trial(study, frozen._trial_id)
        searcher._completed_trials.add(tune_id)
    return searcher, distributions


def time_suggestions(
    study: optuna.Study, distributions: dict[str, Any], warmup: int, count: int, seed: int
) -> list[float]:
    """Seconds per ``ask`` + ``tell``; the first ``warmup`` are not kept (CMA-ES, for one,
    starts its optimizer from the study's first generation there)."""
    rng = random.Random(seed)
    samples = []
    for i in range(warmup + count):
        started = time.perf_counter()
        trial = study.ask(distributions)
        study.tell(trial, quality(trial.params) + rng.gauss(0.0, 0.01))
        if i >= warmup:
            samples.append(time.perf_counter() - started)
    return samples


def time_searcher_save(searcher: Any, repeats: int) -> tuple[list[float], int]:
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            searcher.save_to_dir(tmp, session_str="bench")
            samples.append(time.perf_counter() - started)
        return samples, directory_bytes(Path(tmp))


def search_level(args: argparse.Namespace) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict[str, Any] = {}
    sizes = sorted(set(args.search_trials))
    print(
        f"\n== search: ask + tell per suggestion (median [max] over {args.suggestions}, after "
        f"{args.warmup_suggestions} untimed), and OptunaSearch.save_to_dir (median of "
        f"{args.save_repeats}); ratios to each sampler's {sizes[0]} trials",
        flush=True,
    )
    print(
        f"{'sampler':<8}{'trials':>8}{'ask+tell ms':>22}{'ratio':>9}"
        f"{'save ms':>11}{'state MB':>10}{'ratio':>9}"
    )
    for algorithm in args.samplers:
        asked_sizes = sorted(set(args.gp_trials)) if algorithm == "gp" else sizes
        rows: dict[str, Any] = {}
        measured: dict[int, float] = {}
        for n in sorted(set(sizes) | set(asked_sizes)):
            searcher, distributions = filled_searcher(algorithm, n, args.search_epochs, args.seed)
            row: dict[str, Any] = {"trials": n}
            saves, size = time_searcher_save(searcher, args.save_repeats)  # n trials exactly
            row.update(save_median_s=median(saves), save_bytes=size)
            if n in asked_sizes:
                study = searcher._ot_study
                # GP needs no warm-up, and each suggestion costs seconds at 1,000 trials.
                warmup = (
                    min(1, args.warmup_suggestions)
                    if algorithm == "gp"
                    else args.warmup_suggestions
                )
                count = args.suggestions
                samples = time_suggestions(study, distributions, warmup, count, args.seed)
                row.update(run=True, ask_tell_median_s=median(samples), ask_tell_max_s=max(samples))
                measured[n] = row["ask_tell_median_s"]
            else:
                row["run"] = False
            rows[str(n)] = row
            del searcher
        fit = fitted_exponent(list(measured), list(measured.values()))
        base_ask = measured.get(min(measured)) if measured else None
        base_save = rows[str(min(int(k) for k in rows))]["save_median_s"]
        for key, row in rows.items():
            n = int(key)
            row["save_ratio"] = ratio(row["save_median_s"], base_save)
            if row["run"]:
                row["ask_tell_ratio"] = ratio(row["ask_tell_median_s"], base_ask)
                timing = f"{fmt_ms(row['ask_tell_median_s'])} [{fmt_ms(row['ask_tell_max_s'])}]"
                shown = fmt_ratio(row["ask_tell_ratio"])
            elif fit is not None:
                exponent, intercept = fit
                row["exponent"] = exponent
                row["extrapolated_s"] = math.exp(intercept + exponent * math.log(n))
                row["ask_tell_ratio"] = ratio(row["extrapolated_s"], base_ask)
                timing = "not run"
                shown = fmt_ratio(row["ask_tell_ratio"])
            else:
                timing, shown = "not run", "-"
            print(
                f"{algorithm:<8}{n:>8}{timing:>22}{shown:>9}{fmt_ms(row['save_median_s']):>11}"
                f"{row['save_bytes'] / 1e6:>10.2f}{fmt_ratio(row['save_ratio']):>9}",
                flush=True,
            )
            if not row["run"] and algorithm == "gp":
                if fit is not None:
                    print(
                        f"{'':<16}not run (GP cost grows as n^3; extrapolated "
                        f"{row['extrapolated_s']:.3g} s from the fitted exponent "
                        f"{row['exponent']:.2f} over {sorted(measured)} trials)"
                    )
                else:
                    print(f"{'':<16}not run (GP cost grows as n^3; too few sizes to fit one)")
        figures[algorithm] = {"sizes": rows, "fitted_exponent": fit[0] if fit else None}
    return figures


# ---------------------------------------------------------------- Tune's experiment state


def build_controller(
    root: Path, n: int, running: int, epochs: int, checkpoint_every: int, seed: int
) -> tuple[Any, list[Any], Any]:
    """A `TuneController` with ``n`` trials of a digits sweep, the last ``running`` of them
    still running, the rest finished; callbacks and searcher as the driver sets them up."""
    from ray import tune
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from sweeps.driver import _trial_name, tune_callbacks

    sweep = f"scale-{n}"
    spec = search_spec("tpe", n)
    searcher, _ = filled_searcher("tpe", n, epochs, seed)
    storage = StorageContext(storage_path=str(root / "tune"), experiment_dir_name=sweep)
    controller = TuneController(
        search_alg=SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=running)),
        callbacks=tune_callbacks(sweep, spec),
        storage=storage,
        reuse_actors=True,
        checkpoint_period=GLOBAL_CHECKPOINT_S,
    )
    callbacks = controller._callbacks
    prefix = uuid.UUID(int=random.Random(seed).getrandbits(128)).hex[:5]
    rng = random.Random(seed)
    live = []
    for i in range(n):
        params = random_params(rng)
        trial = Trial(
            "run_trial",
            config=params,
            trial_id=f"{prefix}_{i + 1:05d}",
            storage=storage,
            evaluated_params=params,
            experiment_tag=f"{i + 1}_noise_scale={params['noise_scale']:.4g},"
            f"prior_variance={params['prior_variance']:.4g}",
            placement_group_factory=PlacementGroupFactory([{"CPU": 0.5}]),
            stopping_criterion={},
            checkpoint_config=tune.CheckpointConfig(),
            trial_name_creator=functools.partial(_trial_name, sweep),
            trial_dirname_creator=functools.partial(_trial_name, sweep),
            stub=True,
        )
        trial.init_local_path()
        is_running = i >= n - running
        trial.set_status(Trial.RUNNING if is_running else Trial.TERMINATED)
        controller.add_trial(trial)
        callbacks.on_trial_start(iteration=i, trials=controller._trials, trial=trial)
        base = quality(params)
        last = epochs // 2 if is_running else epochs
        for epoch in range(1, last + 1):
            result = tune_result(trial, epoch_metrics(epoch, epochs, base, rng), epoch)
            callbacks.on_trial_result(
                iteration=i, trials=controller._trials, trial=trial, result=result
            )
            trial.update_last_result(result)
            if epoch % checkpoint_every == 0 or epoch == epochs:
                directory = Path(trial.storage.trial_fs_path, f"checkpoint_{epoch:06d}")
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "state.json").write_text("{}")
                checkpoint = tune.Checkpoint(str(directory))
                trial.on_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=result))
                callbacks.on_checkpoint(
                    iteration=i, trials=controller._trials, trial=trial, checkpoint=checkpoint
                )
        if is_running:
            live.append(trial)
        else:
            callbacks.on_trial_complete(iteration=i, trials=controller._trials, trial=trial)
    return controller, live, storage


def tune_result(trial: Any, metrics: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``metrics`` with the keys Tune adds to every report."""
    now = time.time()
    return {
        **metrics,
        "timestamp": int(now),
        "checkpoint_dir_name": None,
        "done": False,
        "training_iteration": epoch,
        "trial_id": trial.trial_id,
        "date": time.strftime("%Y-%m-%d_%H-%M-%S"),
        "time_this_iter_s": 0.5,
        "time_total_s": 0.5 * epoch,
        "pid": os.getpid(),
        "hostname": platform.node(),
        "node_ip": "127.0.0.1",
        "config": dict(trial.config),
        "time_since_restore": 0.5 * epoch,
        "iterations_since_restore": epoch,
        "experiment_tag": trial.experiment_tag,
    }


def time_saves(
    controller: Any, live: list[Any], storage: Any, repeats: int, epochs: int, seed: int
) -> dict[str, list[float]]:
    """Steady-state saves: before each, every running trial reports one more epoch."""
    rng = random.Random(seed)
    timings = Timings()
    staging = storage.experiment_driver_staging_path
    samples: dict[str, list[float]] = {"save": [], "sync": []}
    with (
        timings.wrapped(controller, "_get_trial_checkpoints", "trials_json"),
        timings.wrapped(controller._search_alg, "save_to_dir", "searcher"),
        timings.wrapped(controller._callbacks, "save_to_dir", "callbacks"),
    ):
        for repeat in range(repeats + 1):
            for trial in live:
                epoch = int(trial.last_result.get("training_iteration", 0)) + 1
                metrics = epoch_metrics(min(epoch, epochs), epochs, quality(trial.config), rng)
                result = tune_result(trial, metrics, epoch)
                controller._callbacks.on_trial_result(
                    iteration=repeat, trials=controller._trials, trial=trial, result=result
                )
                trial.update_last_result(result)
                controller._mark_trial_to_checkpoint(trial)
            started = time.perf_counter()
            controller.save_to_dir()
            saved = time.perf_counter()
            storage.syncer.sync_up(staging, storage.experiment_fs_path)
            storage.syncer.wait()
            samples["save"].append(saved - started)
            samples["sync"].append(time.perf_counter() - saved)
    samples.update(timings.calls)
    return samples


def saving_period(save_s: float) -> float:
    """The period `adaptive_state_saves` sets after a save that took ``save_s``."""
    return max(MIN_STATE_SAVE_PERIOD_S, save_s / STATE_SAVE_SHARE)


def tune_state_level(args: argparse.Namespace) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict[str, Any] = {}
    sizes = sorted(set(args.tune_trials))
    print(
        f"\n== tune_state: one save of Tune's experiment state, {args.tune_running} trials "
        f"running ({args.tune_epochs} epochs, a checkpoint every {args.tune_checkpoint_every});"
        f" median over {args.tune_repeats} saves after a first (cold) one; ratios to "
        f"{sizes[0]} trials",
        flush=True,
    )
    print(
        f"{'trials':>7}{'build s':>9}{'cold ms':>10}{'save ms':>10}{'ratio':>8}"
        f"{'trials':>9}{'state':>9}{'searcher':>10}{'callbks':>9}{'share@1s':>10}"
        f"{'upload ms':>11}{'ratio':>8}{'state MB':>10}{'staged MB':>11}"
    )
    baseline: dict[str, float] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            controller, live, storage = build_controller(
                Path(tmp),
                n,
                args.tune_running,
                args.tune_epochs,
                args.tune_checkpoint_every,
                args.seed,
            )
            built = time.perf_counter() - started
            samples = time_saves(
                controller, live, storage, args.tune_repeats, args.tune_epochs, args.seed
            )
            staging = Path(storage.experiment_driver_staging_path)
            state_bytes = sum(
                f.stat().st_size for f in staging.glob("experiment_state-*.json") if f.is_file()
            )
            staged_bytes = directory_bytes(staging)
            # The staging copy lives in Ray's session directory, not under tmp.
            shutil.rmtree(staging.parent, ignore_errors=True)
        steady = {key: median(values[1:]) for key, values in samples.items()}
        part = {
            key: steady[key] for key in ("trials_json", "searcher", "callbacks") if key in steady
        }
        part["state_file"] = steady["save"] - sum(part.values())
        row = {
            "trials": n,
            "build_s": built,
            "cold_save_s": samples["save"][0],
            "save_s": steady["save"],
            "save_max_s": max(samples["save"][1:]),
            "parts_s": part,
            "driver_share_at_1s": steady["save"] / (GLOBAL_CHECKPOINT_S + steady["save"]),
            # What the driver does now (sweeps.checkpoints.adaptive_state_saves).
            "adaptive_period_s": (period := saving_period(steady["save"])),
            "driver_share_adaptive": steady["save"] / (period + steady["save"]),
            "upload_s": steady["sync"],
            "upload_share_at_1s": min(1.0, steady["sync"] / (GLOBAL_CHECKPOINT_S + steady["save"])),
            "state_file_bytes": state_bytes,
            "staged_bytes": staged_bytes,
        }
        baseline = baseline or {"save": row["save_s"], "upload": row["upload_s"]}
        row["save_ratio"] = ratio(row["save_s"], baseline["save"])
        row["upload_ratio"] = ratio(row["upload_s"], baseline["upload"])
        figures[str(n)] = row
        print(
            f"{n:>7}{built:>9.1f}{fmt_ms(row['cold_save_s']):>10}{fmt_ms(row['save_s']):>10}"
            f"{fmt_ratio(row['save_ratio']):>8}{fmt_ms(part.get('trials_json')):>9}"
            f"{fmt_ms(part['state_file']):>9}{fmt_ms(part.get('searcher')):>10}"
            f"{fmt_ms(part.get('callbacks')):>9}{row['driver_share_at_1s']:>9.1%} "
            f"{row['adaptive_period_s']:>7.1f}s{row['driver_share_adaptive']:>6.1%} "
            f"{fmt_ms(row['upload_s']):>11}{fmt_ratio(row['upload_ratio']):>8}"
            f"{state_bytes / 1e6:>10.2f}{staged_bytes / 1e6:>11.2f}",
            flush=True,
        )
        del controller, live, storage
    print(
        "  save: TuneController.save_to_dir, in the driver's loop (trials: the changed trials' "
        "JSON; state: the experiment-state file; searcher: SearchGenerator.save_to_dir; "
        "callbks: the callbacks' get_state, CheckpointPruner's deletions among them)\n"
        "  share@1s: save / (1 s + save), the loop's time spent saving at "
        "TUNE_GLOBAL_CHECKPOINT_S=1 (the driver's setting before this change); period and "
        "share: what adaptive_state_saves makes of it now (every 1 s, or 20x the save)\n"
        "  upload: the staging directory's copy to the storage path after each save (a "
        "background thread; a save skips it while the last one runs)"
    )
    return figures


# ---------------------------------------------------------------- parent run's summary


def parent_summary_level(args: argparse.Namespace) -> dict[str, Any]:
    from sweeps.tracking import Tracker

    sizes = sorted(set(args.summary_trials))
    print(
        f"\n== parent_summary: Tracker.finish_sweep with N trial summaries (MLflow on SQLite),"
        f" median over {args.summary_repeats}; ratios to {sizes[0]} trials",
        flush=True,
    )
    print(f"{'trials':>7}{'finish s':>10}{'max s':>9}{'ratio':>8}{'summary MB':>12}")
    figures: dict[str, Any] = {}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        tracker.experiment_id("warm-up")  # the database exists before any real sweep
        baseline = None
        for n in sizes:
            spec = search_spec("tpe", n)
            trials = []
            for i in range(n):
                params = random_params(rng)
                metrics = epoch_metrics(10, 10, quality(params), rng)
                trials.append(
                    TrialSummary(
                        trial_id=f"abcde_{i + 1:05d}",
                        name=f"scale-{i + 1:05d}",
                        state="succeeded",
                        params=params,
                        metrics=reported_metrics(metrics),
                        mlflow_run_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                    )
                )
            samples = []
            size = 0
            for repeat in range(args.summary_repeats):
                name = f"scale-{n}-{repeat}"
                experiment_id, parent = tracker.open_sweep(spec, name)
                outcome = SweepOutcome(
                    sweep=name,
                    status="succeeded",
                    reason=f"{n} of {n} trials finished",
                    objectives=[{"metric": "val_nll", "goal": "minimize"}],
                    trials=trials,
                    best=best_trials(spec.objectives, trials),
                    experiment_id=experiment_id,
                    parent_run_id=parent,
                    tracking_uri=tracker.tracking_uri,
                    experiment_path=str(Path(tmp) / "tune" / name),
                )
                started = time.perf_counter()
                tracker.finish_sweep(outcome)
                samples.append(time.perf_counter() - started)
                size = len(json.dumps(outcome.to_dict(), indent=2, default=str))
            row = {
                "trials": n,
                "finish_s": median(samples),
                "finish_max_s": max(samples),
                "summary_bytes": size,
            }
            baseline = baseline or row["finish_s"]
            row["ratio"] = ratio(row["finish_s"], baseline)
            figures[str(n)] = row
            print(
                f"{n:>7}{row['finish_s']:>10.3f}{row['finish_max_s']:>9.3f}"
                f"{fmt_ratio(row['ratio']):>8}{size / 1e6:>12.2f}",
                flush=True,
            )
    return figures


# ---------------------------------------------------------------- the driver


def driver_document(n: int, args: argparse.Namespace) -> dict[str, Any]:
    epochs = args.driver_epochs
    return example_document(
        name=f"scale-{n}",
        fixed={"epochs": epochs, "batch_size": 128, "lr": 0.001, "device": "cpu"},
        search={"algorithm": args.driver_sampler, "seed": 0, "n_startup_trials": 10},
        budget={"max_trials": n, "max_concurrent_trials": args.driver_concurrent},
        resources={"cpu": args.driver_cpu},
        ensemble={"size": 0},
        early_stopping={"kind": "none"},
        fault_tolerance={"max_retries_per_trial": 0, "checkpoint_every_epochs": epochs},
        tracking={"log_reliability_diagram": False},
    )


class RssSampler(threading.Thread):
    """This process's resident set, sampled every ``period_s`` (the peak between samples of
    getrusage is the process's lifetime peak, this one the run's)."""

    def __init__(self, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.peak = 0
        self.done = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.done.is_set():
            with open("/proc/self/statm") as handle:
                self.peak = max(self.peak, int(handle.read().split()[1]) * self.page)
            self.done.wait(self.period_s)


def one_driver_run(n: int, args: argparse.Namespace, address: str, root: str) -> dict[str, Any]:
    """One sweep of ``n`` instant trials in this (fresh) process; the driver's figures."""
    import ray.cloudpickle
    import sqlalchemy as sa
    from ray.train._internal.storage import _get_ray_train_session_dir
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    import sweeps.driver
    from service.store import repository
    from service.store.database import make_engine, session_factory, upgrade
    from service.store.models import Trial as StoredTrial
    from service.store.sweep_store import DatabaseSweepStore
    from sweeps.driver import DriverOptions
    from sweeps.progress import SweepCallback, SweepMonitor
    from sweeps.store import run_stored

    # The instant trial's helpers travel to the workers by value, whatever this module is.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address=address, log_to_driver=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(root, f"driver-{n}")
    engine = make_engine(f"sqlite:///{work / 'store.db'}")
    work.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    spec = parse_spec(driver_document(n, args), Limits(max_trials=max(n, 1000)))
    with session_factory(engine)() as session:
        sweep, _ = repository.create_sweep(
            session, spec.to_document(), limits=Limits(max_trials=max(n, 1000)).to_document()
        )
        sweep_id = sweep.id
    store = DatabaseSweepStore(engine)
    first_start: dict[str, float] = {}
    last_end: dict[str, float] = {}

    def seen(monitor: Any, event: Any, *rest: Any, **named: Any) -> None:
        """The driver's view of each trial's start and end (what it hands to the store)."""
        now = time.perf_counter()
        if event.state == "running":
            first_start.setdefault(event.trial_id, now)
        elif event.state in ("succeeded", "stopped", "failed"):
            last_end[event.trial_id] = now

    options = DriverOptions(
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        storage_path=str(work / "tune"),
        quiet=True,
    )
    timings = Timings()
    hooks: list[tuple[Any, str, str, Any]] = [
        (SweepCallback, name, f"callback.{name}", None)
        for name in (
            "on_trial_start",
            "on_trial_result",
            "on_trial_complete",
            "on_trial_error",
            "on_trial_recover",
            "on_step_end",
        )
    ]
    # The store takes events one by one (synchronously, from Tune's loop) or in batches.
    writes = "record_trials" if hasattr(store, "record_trials") else "record_trial"
    hooks += [
        (SweepMonitor, "update", "monitor.update", seen),
        (store, writes, f"store.{writes}", None),
        (TuneController, "save_to_dir", "tune.save_to_dir", None),
        (OptunaSearch, "suggest", "searcher.suggest", None),
        (sweeps.driver.Tracker, "finish_sweep", "tracker.finish_sweep", None),
    ]
    sampler = RssSampler()
    sampler.start()
    original_trial = sweeps.driver.run_trial
    sweeps.driver.run_trial = make_instant_trial(args.driver_epochs, checkpoint=True)
    try:
        with contextlib.ExitStack() as stack:
            for owner, name, label, observe in hooks:
                stack.enter_context(timings.wrapped(owner, name, label, observe))
            before = resource.getrusage(resource.RUSAGE_SELF)
            cpu_before = before.ru_utime + before.ru_stime
            called = time.perf_counter()
            outcome = run_stored(sweep_id, store, options)
            wall = time.perf_counter() - called
        state_bytes = sum(
            f.stat().st_size for f in (work / "tune" / sweep_id).glob("experiment_state-*.json")
        )
        with session_factory(engine)() as session:
            stored = session.scalar(
                sa.select(sa.func.count())
                .select_from(StoredTrial)
                .where(StoredTrial.sweep_id == sweep_id, StoredTrial.state == "succeeded")
            )
    finally:
        sweeps.driver.run_trial = original_trial
        sampler.done.set()
        sampler.join()
        # Tune's staging copy of the experiment (uploaded whole at every save) lives in Ray's
        # session directory, not under root.
        staged_bytes = 0
        for staged in Path(_get_ray_train_session_dir()).glob(f"*/{sweep_id}"):
            staged_bytes += directory_bytes(staged)
            shutil.rmtree(staged, ignore_errors=True)
        ray.shutdown()
        engine.dispose()
    counts = outcome.counts()
    if counts.get("succeeded", 0) != n or stored != n or len(last_end) != n:
        raise RuntimeError(
            f"driver sweep of {n} did not finish cleanly: outcome {counts} ({outcome.reason}), "
            f"{stored} succeeded in the store, {len(last_end)} ends seen"
        )
    span = max(last_end.values()) - min(first_start.values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "trials": n,
        "wall_s": wall,
        "startup_s": min(first_start.values()) - called,
        "span_s": span,
        "per_trial_s": span / n,
        "calls": timings.calls,
        "driver_cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        # Sampled from /proc/self/statm during the run: getrusage's ru_maxrss survives fork
        # and exec, so a driver spawned after a big part reported that part's peak.
        "peak_rss_bytes": sampler.peak,
        "counts": counts,
        "store_writes": writes,
        "state_file_bytes": state_bytes,
        "staged_bytes": staged_bytes,
    }


def _driver_child(n: int, args: argparse.Namespace, address: str, root: str, results: Any) -> None:
    try:
        results.put(("ok", one_driver_run(n, args, address, root)))
    except BaseException as error:
        import traceback

        results.put(("error", "".join(traceback.format_exception(error))))
        raise


def summarise_calls(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        "max_s": max(samples),
        "total_s": sum(samples),
    }


def driver_level(args: argparse.Namespace, address: str) -> dict[str, Any]:
    sizes = sorted(set(args.driver_trials))
    print(
        f"\n== driver: run_stored on a SQLite DatabaseSweepStore, instant trials "
        f"({args.driver_epochs} epochs, {args.driver_sampler}, {args.driver_concurrent} "
        f"concurrent at {args.driver_cpu:g} CPU); each size a fresh driver process; ratios to "
        f"{sizes[0]} trials",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        for n in sizes:
            results = context.Queue()
            child = context.Process(target=_driver_child, args=(n, args, address, root, results))
            child.start()
            while True:
                try:
                    status, payload = results.get(timeout=5)
                    break
                except queue.Empty:
                    if not child.is_alive():
                        raise RuntimeError(
                            f"the {n}-trial driver process died (exit code {child.exitcode})"
                        ) from None
            child.join()
            if status != "ok":
                raise RuntimeError(f"the {n}-trial driver run failed:\n{payload}")
            calls = payload.pop("calls")
            events = [s for label in TRIAL_CALLBACKS for s in calls.get(label, [])]
            figures[str(n)] = {
                **payload,
                "driver_cpu_per_trial_s": payload["driver_cpu_s"] / n,
                "callback_events": summarise_calls(events),
                "callback_steps": summarise_calls(calls.get("callback.on_step_end", [])),
                "calls": {label: summarise_calls(values) for label, values in calls.items()},
            }
            print(
                f"  {n} trials: span {payload['span_s']:.1f} s, start-up "
                f"{payload['startup_s']:.1f} s, wall {payload['wall_s']:.1f} s",
                flush=True,
            )
    base = figures[str(sizes[0])]
    print(
        f"{'trials':>7}{'s/trial':>9}{'ratio':>8}{'cpu ms/trial':>14}{'ratio':>8}"
        f"{'event p50':>11}{'p99':>8}{'max':>9}{'ratio p99':>10}{'step p99':>10}"
        f"{'saves':>7}{'save p50':>10}{'save max':>10}{'peak RSS MB':>13}{'ratio':>8}"
    )
    for key, row in figures.items():
        saves = row["calls"].get("tune.save_to_dir", {"count": 0})
        events = row["callback_events"]
        row["per_trial_ratio"] = ratio(row["per_trial_s"], base["per_trial_s"])
        row["driver_cpu_ratio"] = ratio(
            row["driver_cpu_per_trial_s"], base["driver_cpu_per_trial_s"]
        )
        row["callback_p99_ratio"] = ratio(events.get("p99_s"), base["callback_events"].get("p99_s"))
        row["peak_rss_ratio"] = ratio(row["peak_rss_bytes"], base["peak_rss_bytes"])
        print(
            f"{key:>7}{row['per_trial_s']:>9.3f}{fmt_ratio(row['per_trial_ratio']):>8}"
            f"{row['driver_cpu_per_trial_s'] * 1000:>14.1f}{fmt_ratio(row['driver_cpu_ratio']):>8}"
            f"{fmt_ms(events.get('p50_s')):>11}{fmt_ms(events.get('p99_s')):>8}"
            f"{fmt_ms(events.get('max_s')):>9}{fmt_ratio(row['callback_p99_ratio']):>10}"
            f"{fmt_ms(row['callback_steps'].get('p99_s')):>10}"
            f"{saves['count']:>7}{fmt_ms(saves.get('p50_s')):>10}{fmt_ms(saves.get('max_s')):>10}"
            f"{row['peak_rss_bytes'] / 2**20:>13.0f}{fmt_ratio(row['peak_rss_ratio']):>8}"
        )
    print(
        "  s/trial: first trial's start to last trial's end, over the trials; cpu: the driver "
        "process's CPU time per trial; event: one SweepCallback call on a trial event (start, "
        "result, end: Tune's loop waits for it, ms); step: its on_step_end (ms); saves: Tune's "
        "experiment-state saves (TuneController.save_to_dir, ms); peak RSS: the driver process's "
        "resident set, sampled every 50 ms"
    )
    print("  per call (p50 / p99 / max ms, count):")
    for key, row in figures.items():
        for label, call in sorted(row["calls"].items()):
            if call["count"]:
                print(
                    f"  {key:>7} {label:<28}{fmt_ms(call['p50_s']):>9}{fmt_ms(call['p99_s']):>9}"
                    f"{fmt_ms(call['max_s']):>10}{call['count']:>8}"
                )
    return figures


# ---------------------------------------------------------------- the store


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def store_engine(backend: str, root: Path, postgres_url: str) -> Iterator[sa.Engine]:
    """A migrated store: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{root / 'store.db'}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    base = sa.make_url(postgres_url)
    schema = f"gradreg_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(base.update_query_dict({"options": f"-csearch_path={schema}"}))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def running_sweep(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        sweep, _ = repository.create_sweep(
            session, {"name": name, "objectives": [{"metric": "val_nll"}]}
        )
        for status in ("submitted", "running"):
            repository.transition(session, sweep.id, status)
    return sweep.id


def trial_report(trial_id: str, rng: random.Random, state: str = "running") -> TrialEvent:
    epoch = rng.randint(1, 50)
    metrics = {
        "epoch": float(epoch),
        "val_nll": rng.uniform(0.1, 2.0),
        "val_accuracy": rng.uniform(0.5, 1.0),
        "val_ece": rng.uniform(0.0, 0.2),
        "train_nll": rng.uniform(0.1, 2.0),
    }
    params = {"noise_scale": rng.uniform(1e-3, 1e-1), "prior_variance": rng.uniform(0.1, 10)}
    return TrialEvent("bench", trial_id, f"trial {trial_id}", state, params, metrics, epoch, None)


def legacy_report(session: Session, sweep_id: str, event: TrialEvent) -> None:
    """The per-report write before the store kept its best incrementally (the issue's baseline):
    lock the sweep row, write the trial, load and score every trial of the sweep in Python."""
    objective = Objective(metric="val_nll")
    with repository.writing(session):
        repository.locked(session, sweep_id)
        version, _, _ = repository.bump(session, sweep_id)
        write_trials(session, sweep_id, [TrialWrite.of_event(event)], version, objective)
        trials = session.scalars(
            sa.select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.trial_id)
        )
        best = best_trials([objective], trials, finished_only=False)
        summary = [best[0].summary()] if best else None
        repository.update_row(session, sweep_id, {"best": summary}, bump=False)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * median(samples_s), "p99_ms": 1e3 * percentile(samples_s, 99)}


def timed(work: Callable[[], object], repeats: int) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def store_level(args: argparse.Namespace) -> dict[str, Any]:
    """Per-report store cost, a /trials page, /best and an events poll, at each sweep size, on
    each database; ratios to the smallest size. A report is one event in its own transaction,
    the driver's worst case (its writer batches what arrives within a flush); "legacy" is the
    write before migration 0003 (row lock, then a scan of every trial), in the same run."""
    rng = random.Random(args.seed)
    figures: dict[str, Any] = {}
    print(
        "\n== store: ms per call, p50 / p99 over "
        f"{args.store_reports} reports and {args.store_requests} requests; ratios to "
        f"{min(args.store_sizes)} trials"
    )
    for backend in args.store_backends:
        with (
            tempfile.TemporaryDirectory() as tmp,
            store_engine(backend, Path(tmp), args.postgres_url) as engine,
        ):
            sessions = make_sessions(engine)
            app = FastAPI()
            problems.install(app)
            app.include_router(sweeps_router)
            app.state.settings = ServiceSettings(api_tokens="bench")
            app.state.sessions = sessions
            client = TestClient(app, headers={"Authorization": "Bearer bench"})
            baseline: dict[str, float] = {}
            for size in sorted(args.store_sizes):
                row = store_figures(DatabaseSweepStore(engine), sessions, client, size, args, rng)
                baseline = baseline or {k: v["p50_ms"] for k, v in row.items()}
                row["ratios_p50"] = {k: ratio(row[k]["p50_ms"], baseline[k]) for k in baseline}
                figures[f"{backend}/{size}"] = row
                print(
                    f"  {backend:<10} {size:>6} trials: report {row['report']['p50_ms']:.2f} / "
                    f"{row['report']['p99_ms']:.2f} ({fmt_ratio(row['ratios_p50']['report'])})"
                    f", in a batch of 50 {row['report_in_batch_of_50']['p50_ms']:.3f}, legacy "
                    f"{row['legacy_report']['p50_ms']:.2f} "
                    f"({fmt_ratio(row['ratios_p50']['legacy_report'])}); /trials page of 50 "
                    f"{row['trials_page_50']['p99_ms']:.1f} p99, from the middle "
                    f"{row['trials_page_50_mid']['p99_ms']:.1f}, top 50 by val_nll "
                    f"{row['trials_top_50_by_val_nll']['p99_ms']:.1f} "
                    f"({fmt_ratio(row['ratios_p50']['trials_top_50_by_val_nll'])}); /best "
                    f"{row['best']['p99_ms']:.1f}; events poll {row['events_poll']['p99_ms']:.1f}",
                    flush=True,
                )
    return figures


def store_figures(
    store: DatabaseSweepStore,
    sessions: sessionmaker[Session],
    client: TestClient,
    size: int,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, Any]:
    settings = ServiceSettings(api_tokens="bench")
    sweep_id = running_sweep(sessions, f"scale-{size}")
    ids = [f"{uuid.uuid4().hex[:8]}_{i:05d}" for i in range(size)]
    for start in range(0, size, 500):
        store.record_trials(sweep_id, [trial_report(t, rng) for t in ids[start : start + 500]])
    with sessions() as session:
        # Table statistics, as autovacuum keeps them on a live store. Fresh from an empty
        # table, PostgreSQL's planner takes the sweep for one row and sorts instead of
        # reading the (sweep, objective) index: 0.5 ms at 1,000 trials.
        session.execute(sa.text("ANALYZE trials"))
        session.commit()
    base = f"/v1/sweeps/{sweep_id}"
    middle, cursor = 0, None  # the cursor of the sweep's middle page
    while middle < size // 2:
        params = {"limit": min(repository.MAX_PAGE, size // 2 - middle), "cursor": cursor}
        page = client.get(f"{base}/trials", params={k: v for k, v in params.items() if v}).json()
        middle, cursor = middle + len(page["items"]), page["next_cursor"]

    def get(path: str, **params: object) -> None:
        response = client.get(path, params=params)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")

    def legacy() -> None:
        with sessions() as session:
            legacy_report(session, sweep_id, trial_report(rng.choice(ids), rng))

    def follow() -> None:
        # One poll of the events stream one report behind: the changed trials and the sweep
        # (with its counts), as JSON-ready payloads.
        seen: dict[str, Any] = {}
        event_payloads(sessions, settings, sweep_id, version_before_last_report, seen)

    batch = max(5, args.store_reports // 20)
    per_batch = timed(
        lambda: store.record_trials(
            sweep_id, [trial_report(rng.choice(ids), rng) for _ in range(50)]
        ),
        batch,
    )
    figures = {
        "report": timed(
            lambda: store.record_trials(sweep_id, [trial_report(rng.choice(ids), rng)]),
            args.store_reports,
        ),
        "report_in_batch_of_50": {key: value / 50 for key, value in per_batch.items()},
        "legacy_report": timed(legacy, max(10, args.store_reports // 4)),
        "trials_page_50": timed(lambda: get(f"{base}/trials", limit=50), args.store_requests),
        "trials_page_50_mid": timed(
            lambda: get(f"{base}/trials", limit=50, cursor=cursor),
            args.store_requests,
        ),
        "trials_top_50_by_val_nll": timed(
            lambda: get(f"{base}/trials", limit=50, order_by="val_nll"), args.store_requests
        ),
        "best": timed(lambda: get(f"{base}/best"), args.store_requests),
    }
    with sessions() as session:
        version_before_last_report = repository.get_sweep(session, sweep_id).version
    store.record_trials(sweep_id, [trial_report(rng.choice(ids), rng)])
    figures["events_poll"] = timed(follow, args.store_requests)
    return figures


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    group = parser.add_argument_group("search")
    group.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    group.add_argument("--search-trials", nargs="+", type=int, default=[100, 1000, 10000])
    group.add_argument(
        "--gp-trials", nargs="+", type=int, default=[100, 300, 1000], help="GP's own sizes"
    )
    group.add_argument("--search-epochs", type=int, default=20, help="intermediate values")
    group.add_argument("--suggestions", type=int, default=5, help="timed ask+tell per size")
    group.add_argument(
        "--warmup-suggestions", type=int, default=8, help="untimed first (GP: at most 1)"
    )
    group.add_argument("--save-repeats", type=int, default=3)
    group = parser.add_argument_group("tune_state")
    group.add_argument("--tune-trials", nargs="+", type=int, default=[1000, 10000])
    group.add_argument("--tune-running", type=int, default=4, help="trials reporting per save")
    group.add_argument("--tune-epochs", type=int, default=20)
    group.add_argument("--tune-checkpoint-every", type=int, default=5)
    group.add_argument("--tune-repeats", type=int, default=5)
    group = parser.add_argument_group("parent_summary")
    group.add_argument("--summary-trials", nargs="+", type=int, default=[100, 1000, 10000])
    group.add_argument("--summary-repeats", type=int, default=3)
    group = parser.add_argument_group("driver")
    group.add_argument("--driver-trials", nargs="+", type=int, default=[200, 2000])
    group.add_argument("--driver-epochs", type=int, default=5)
    group.add_argument("--driver-sampler", choices=("tpe", "random"), default="tpe")
    group.add_argument("--driver-concurrent", type=int, default=4)
    group.add_argument("--driver-cpu", type=float, default=0.5)
    group = parser.add_argument_group("store")
    group.add_argument(
        "--store-backends",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
    )
    group.add_argument("--store-sizes", nargs="+", type=int, default=[100, 1000, 10000])
    group.add_argument("--store-reports", type=int, default=400, help="timed single reports")
    group.add_argument("--store-requests", type=int, default=200, help="timed API requests")
    group.add_argument("--postgres-url", default=POSTGRES_URL)
    args = parser.parse_args()

    print(
        f"# {os.cpu_count()} CPUs, Python {platform.python_version()}, ray {ray.__version__}, "
        f"optuna {optuna.__version__}; parts: {' '.join(args.parts)}",
        flush=True,
    )
    figures: dict[str, Any] = {"parts": args.parts}
    needs_ray = {"tune_state", "driver"} & set(args.parts)
    if needs_ray:
        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"# Ray start-up (not charged): {time.perf_counter() - started:.1f} s", flush=True)
    try:
        if "search" in args.parts:
            figures["search"] = search_level(args)
        if "tune_state" in args.parts:
            figures["tune_state"] = tune_state_level(args)
        if "parent_summary" in args.parts:
            figures["parent_summary"] = parent_summary_level(args)
        if "driver" in args.parts:
            figures["driver"] = driver_level(args, ray.get_runtime_context().gcs_address)
        if "store" in args.parts:
            figures["store"] = store_level(args)
    finally:
        if needs_ray:
            ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(f"\n# figures written to {args.json}")


if __name__ == "__main__":
    main()
