"""How the sweep driver's cost per trial grows with a sweep's trials.

    python benchmarks/sweep_scale_driver.py --driver-trials 200 2000 --json driver.json

A real sweep of instant trials (they report ``--driver-epochs`` epochs of made-up metrics and a
checkpoint, no training, no MLflow run) through `run_stored` and the service's
`DatabaseSweepStore` on SQLite, each size in a fresh driver process (the service runs every
driver as its own Ray job) connected to the one Ray instance: time per trial (first trial's
start to last trial's end, as the driver handed them to the store: `SweepMonitor.update`), the
driver's CPU time per trial, the time each call into the driver's Tune callback takes
(`SweepCallback`: the driver's Tune loop waits for it), the store's writes, Tune's saves as they
happened, and the driver process's peak RSS (sampled). The trials never call MLflow; the driver
still opens and closes the sweep's parent run. Each figure is printed with its ratio to the
smallest size, in this run.

Each size runs once per ``--variants`` (`_sweep_scale_common.VARIANTS`): the driver as it is
(``trimmed``) and without `sweeps.tune_results.TuneResultTrimmer` (``untrimmed``, how Tune kept
every report before issue 29). Besides the ratios to the smallest size, it prints each variant's
driver memory per trial (the peak resident set's growth from the smallest size to each larger
one, over the added trials) and its state file per trial, and trimmed / untrimmed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _sweep_scale_common
from _sweep_scale_common import (
    VARIANTS,
    Timings,
    compare_variants,
    directory_bytes,
    driver_callbacks,
    epoch_metrics,
    example_document,
    fmt_ms,
    fmt_ratio,
    header,
    local_ray,
    parser,
    positive_int,
    quality,
    ratio,
    state_saves,
    summary,
    write_figures,
)

# SweepCallback's hooks on a trial's events (on_step_end, timed too, runs at every step).
TRIAL_EVENTS = (
    "on_trial_start",
    "on_trial_result",
    "on_trial_complete",
    "on_trial_error",
    "on_trial_recover",
)
TRIAL_CALLBACKS = tuple(f"callback.{name}" for name in TRIAL_EVENTS)


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


def one_driver_run(
    n: int, args: argparse.Namespace, address: str, root: str, variant: str
) -> dict[str, Any]:
    """One sweep of ``n`` instant trials in this (fresh) process, with the driver's callbacks
    as ``variant`` has them; the driver's figures."""
    import optuna
    import ray
    import ray.cloudpickle
    import sqlalchemy as sa
    from ray.train._internal.storage import _get_ray_train_session_dir
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    import sweeps.driver
    from service.store import sweep_queries
    from service.store.database import make_engine, session_factory, upgrade
    from service.store.models import Trial as StoredTrial
    from service.store.sweep_store import DatabaseSweepStore
    from sweeps.driver import DriverOptions
    from sweeps.progress import SweepCallback, SweepMonitor
    from sweeps.spec.limits import Limits
    from sweeps.spec.parse import parse_spec
    from sweeps.store import run_stored

    # The instant trial and its helpers travel to the workers by value: no worker can import
    # this script or its shared module by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(_sweep_scale_common)
    ray.init(address=address, log_to_driver=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweeps.driver.tune_callbacks = driver_callbacks(variant)
    sweeps.driver.compact_saves = state_saves(variant)
    work = Path(root, f"driver-{n}-{variant}")
    engine = make_engine(f"sqlite:///{work / 'store.db'}")
    work.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    spec = parse_spec(driver_document(n, args), Limits(max_trials=max(n, 1000)))
    with session_factory(engine)() as session:
        sweep, _ = sweep_queries.create_sweep(
            session, spec.to_document(), limits=Limits(max_trials=max(n, 1000)).to_document()
        )
        sweep_id = sweep.id
    store = DatabaseSweepStore(engine)
    first_start: dict[str, float] = {}
    last_end: dict[str, float] = {}

    # Python's own heap (tracemalloc) when half the trials had ended and when all had: what of
    # the driver's growth per trial is Python objects, and what is not (Ray's core, the
    # allocator). Off by default: tracing slows every allocation.
    heap: dict[int, int] = {}
    if args.python_heap:
        tracemalloc.start(1)

    def seen(monitor: Any, event: Any, *rest: Any, **named: Any) -> None:
        """The driver's view of each trial's start and end (what it hands to the store)."""
        now = time.perf_counter()
        if event.state == "running":
            first_start.setdefault(event.trial_id, now)
        elif event.state in ("succeeded", "stopped", "failed"):
            last_end[event.trial_id] = now
            if args.python_heap and len(last_end) in (n // 2, n):
                heap.setdefault(len(last_end), tracemalloc.get_traced_memory()[0])

    options = DriverOptions(
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        storage_path=str(work / "tune"),
        quiet=True,
    )
    timings = Timings()
    hooks: list[tuple[Any, str, str, Any]] = [
        (SweepCallback, name, f"callback.{name}", None) for name in (*TRIAL_EVENTS, "on_step_end")
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
        "variant": variant,
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
        "python_heap_bytes_per_trial": (
            (heap[n] - heap[n // 2]) / (n - n // 2) if len(heap) == 2 else None
        ),
    }


def _driver_child(
    n: int, args: argparse.Namespace, address: str, root: str, variant: str, results: Any
) -> None:
    try:
        results.put(("ok", one_driver_run(n, args, address, root, variant)))
    except BaseException as error:
        import traceback

        results.put(("error", "".join(traceback.format_exception(error))))
        raise


def run_in_child(
    n: int, args: argparse.Namespace, address: str, root: str, variant: str
) -> dict[str, Any]:
    """`one_driver_run` in a fresh process (spawned, as the service starts each driver)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_driver_child, args=(n, args, address, root, variant, results))
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
    return payload


def driver_level(args: argparse.Namespace, address: str) -> dict[str, Any]:
    sizes = sorted(set(args.driver_trials))
    print(
        f"\n== driver: run_stored on a SQLite DatabaseSweepStore, instant trials "
        f"({args.driver_epochs} epochs, {args.driver_sampler}, {args.driver_concurrent} "
        f"concurrent at {args.driver_cpu:g} CPU); each size a fresh driver process; ratios to "
        f"{sizes[0]} trials",
        flush=True,
    )
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        for n in sizes:
            for variant in args.variants:
                payload = run_in_child(n, args, address, root, variant)
                calls = payload.pop("calls")
                events = [s for label in TRIAL_CALLBACKS for s in calls.get(label, [])]
                figures[f"{n}/{variant}"] = {
                    **payload,
                    "driver_cpu_per_trial_s": payload["driver_cpu_s"] / n,
                    "state_bytes_per_trial": payload["state_file_bytes"] / n,
                    "callback_events": summary(events),
                    "callback_steps": summary(calls.get("callback.on_step_end", [])),
                    "calls": {label: summary(values) for label, values in calls.items()},
                }
                print(
                    f"  {n} trials, {variant}: span {payload['span_s']:.1f} s, start-up "
                    f"{payload['startup_s']:.1f} s, wall {payload['wall_s']:.1f} s",
                    flush=True,
                )
    print(
        f"{'trials':>7}{'variant':>10}{'s/trial':>9}{'ratio':>8}{'cpu ms/trial':>14}{'ratio':>8}"
        f"{'event p50':>11}{'p99':>8}{'max':>9}{'ratio p99':>10}{'step p99':>10}"
        f"{'saves':>7}{'save p50':>10}{'save max':>10}{'peak RSS MB':>13}{'ratio':>8}"
        f"{'RSS KB/trial':>14}{'state KB/trial':>16}"
    )
    for key, row in figures.items():
        n, variant = key.split("/")
        base = figures[f"{sizes[0]}/{variant}"]
        saves = row["calls"].get("tune.save_to_dir", {"count": 0})
        events = row["callback_events"]
        row["per_trial_ratio"] = ratio(row["per_trial_s"], base["per_trial_s"])
        row["driver_cpu_ratio"] = ratio(
            row["driver_cpu_per_trial_s"], base["driver_cpu_per_trial_s"]
        )
        row["callback_p99_ratio"] = ratio(events.get("p99_s"), base["callback_events"].get("p99_s"))
        row["peak_rss_ratio"] = ratio(row["peak_rss_bytes"], base["peak_rss_bytes"])
        # What each trial past the smallest size added to the driver's memory.
        added = int(n) - sizes[0]
        row["rss_bytes_per_trial"] = (
            (row["peak_rss_bytes"] - base["peak_rss_bytes"]) / added if added else None
        )
        per_trial = row["rss_bytes_per_trial"]
        print(
            f"{n:>7}{variant:>10}{row['per_trial_s']:>9.3f}{fmt_ratio(row['per_trial_ratio']):>8}"
            f"{row['driver_cpu_per_trial_s'] * 1000:>14.1f}{fmt_ratio(row['driver_cpu_ratio']):>8}"
            f"{fmt_ms(events.get('p50_s')):>11}{fmt_ms(events.get('p99_s')):>8}"
            f"{fmt_ms(events.get('max_s')):>9}{fmt_ratio(row['callback_p99_ratio']):>10}"
            f"{fmt_ms(row['callback_steps'].get('p99_s')):>10}"
            f"{saves['count']:>7}{fmt_ms(saves.get('p50_s')):>10}{fmt_ms(saves.get('max_s')):>10}"
            f"{row['peak_rss_bytes'] / 2**20:>13.0f}{fmt_ratio(row['peak_rss_ratio']):>8}"
            f"{'–' if per_trial is None else f'{per_trial / 1e3:.0f}':>14}"
            f"{row['state_bytes_per_trial'] / 1e3:>16.1f}"
        )
    for key, row in figures.items():
        if row.get("python_heap_bytes_per_trial") is not None:
            print(
                f"  {key}: Python's heap grew {row['python_heap_bytes_per_trial'] / 1e3:.1f} KB "
                "per trial over the second half of its trials (tracemalloc)"
            )
    compare_variants(
        figures, sizes, ("state_bytes_per_trial", "peak_rss_bytes", "rss_bytes_per_trial")
    )
    print(
        "  s/trial: first trial's start to last trial's end, over the trials; cpu: the driver "
        "process's CPU time per trial; event: one SweepCallback call on a trial event (start, "
        "result, end: Tune's loop waits for it, ms); step: its on_step_end (ms); saves: Tune's "
        "experiment-state saves (TuneController.save_to_dir, ms); peak RSS: the driver process's "
        "resident set, sampled every 50 ms; RSS KB/trial: its growth from the smallest size, "
        "over the added trials; state KB/trial: Tune's experiment-state file over the trials"
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


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--driver-trials", nargs="+", type=positive_int, default=[200, 2000])
    options.add_argument("--driver-epochs", type=positive_int, default=5)
    options.add_argument("--driver-sampler", choices=("tpe", "random"), default="tpe")
    options.add_argument("--driver-concurrent", type=positive_int, default=4)
    options.add_argument("--driver-cpu", type=float, default=0.5)
    options.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    options.add_argument(
        "--python-heap",
        action="store_true",
        help="trace Python's allocations (slower) and print its heap's growth per trial",
    )
    args = options.parse_args()
    header("driver", ["ray", "optuna", "mlflow", "sqlalchemy"])
    import ray

    with local_ray():
        figures = driver_level(args, ray.get_runtime_context().gcs_address)
    write_figures("driver", args, figures)


if __name__ == "__main__":
    main()
