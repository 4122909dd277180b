"""What the sweep driver costs: the same 8 trials as a plain loop over fit and through the driver.

    python benchmarks/sweep_overhead.py                 # 8 digits trials, 20 epochs, 3 repeats
    python benchmarks/sweep_overhead.py --epochs 200    # longer trials

Each repeat runs, in one process and one after another:
(a) a serial loop over gradreg's fit, one torch thread, no tracking;
(b) the driver (Ray Tune + Optuna + MLflow on SQLite) with 1 trial at a time;
(c) the driver with 2 concurrent trials (one CPU and one torch thread each);
(d) the machine's own ceiling for (c): two plain processes, each looping over half the trials.
Every mode trains the same configurations (given to the driver as initial points).

The driver's figures come from its trials' own start and end, as the driver saw them (the
trial events of `run_sweep`'s hook), so the sweep's one-off start-up and wind-down are left
out by construction rather than subtracted from another run: a sweep's span is its first
trial's start to its last trial's end. The marginal per-trial overhead is (b)'s span per trial
minus (a)'s time per trial; the steady one is (b)'s median trial, its first left out, minus
(a)'s median fit: the first trial of a sweep runs in a fresh worker process, which pays its
imports and first-use costs then, and is printed apart. The concurrency ratio is (b)'s span
over (c)'s. Ray is started once;
its start-up is printed but not charged.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import ray
import torch
from _trial_clock import spread, timed_sweep_run

from gradreg.train import fit
from sweeps import DriverOptions, Limits, parse_spec
from sweeps.spec.resolve import trial_config
from sweeps.tracking import Tracker

N_TRIALS = 8


def points() -> list[dict[str, float]]:
    """8 fixed (noise_scale, prior_variance) pairs spread over the usual ranges."""
    return [
        {"noise_scale": 10 ** (-3 + 2 * i / (N_TRIALS - 1)), "prior_variance": 10 ** ((i % 4) - 1)}
        for i in range(N_TRIALS)
    ]


def sweep_document(epochs: int, concurrent: int, name: str, trials: int = N_TRIALS) -> dict:
    return {
        "name": name,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [128, 128]}},
        "method": "vl-uniform",
        "fixed": {"epochs": epochs, "batch_size": 128, "lr": 0.001, "device": "cpu"},
        "parameters": {
            "noise_scale": {"type": "float", "low": 1e-3, "high": 0.1, "scale": "log"},
            "prior_variance": {"type": "float", "low": 0.1, "high": 100.0, "scale": "log"},
        },
        "search": {"algorithm": "random", "seed": 0, "initial_points": points()[:trials]},
        "budget": {"max_trials": trials, "max_concurrent_trials": concurrent},
        "resources": {"cpu": 1},
        "fault_tolerance": {"max_retries_per_trial": 0, "checkpoint_every_epochs": epochs},
    }


def serial(epochs: int) -> list[float]:
    """Each fit's time in a serial loop over the points."""
    torch.set_num_threads(1)
    spec = parse_spec(sweep_document(epochs, 1, "serial"), Limits())
    times = []
    for values in points():
        started = time.perf_counter()
        fit(trial_config(spec, values))
        times.append(time.perf_counter() - started)
    return times


def _fit_points(epochs: int, indices: list[int], ready: Any) -> None:
    torch.set_num_threads(1)
    spec = parse_spec(sweep_document(epochs, 1, "plain"), Limits())
    configs = [trial_config(spec, points()[i]) for i in indices]
    ready.wait()  # start together, after the imports
    for config in configs:
        fit(config)


def two_processes(epochs: int) -> float:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(3)
    halves = [list(range(0, N_TRIALS, 2)), list(range(1, N_TRIALS, 2))]
    workers = [context.Process(target=_fit_points, args=(epochs, h, ready)) for h in halves]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError("a plain worker process failed")
    return time.perf_counter() - started


@dataclass
class DriverRun:
    wall_s: float  # run_sweep's call, start-up and wind-down included
    starts: list[float]  # each trial's start and end as the driver saw them, by start
    ends: list[float]

    @property
    def span_s(self) -> float:
        return max(self.ends) - min(self.starts)

    @property
    def startup_s(self) -> float:
        return min(self.starts) - self.called

    called: float = 0.0

    def durations(self) -> list[float]:
        """Each trial's start to its end, in the order they started."""
        return [end - start for start, end in zip(self.starts, self.ends, strict=True)]

    def gaps(self) -> list[float]:
        """Between one trial's end and the next one's start (1 concurrent)."""
        return [later - end for end, later in zip(self.ends, self.starts[1:], strict=False)]


def through_driver(epochs: int, concurrent: int, root: Path, tag: str) -> DriverRun:
    name = f"bench-{concurrent}-{tag}"
    spec = parse_spec(sweep_document(epochs, concurrent, name), Limits())
    options = DriverOptions(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        storage_path=str(root / "tune"),
        quiet=True,
    )
    run = timed_sweep_run(spec, options, N_TRIALS)
    return DriverRun(run.wall_s, run.starts, run.ends, called=run.called)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    figures: dict[str, list[float]] = {
        key: []
        for key in (
            "serial_per_trial",
            "startup",
            "overhead",
            "steady",
            "first_extra",
            "gap",
            "concurrency",
            "vs_serial",
            "ceiling",
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        # The tracking database exists before a sweep in any real deployment: create it now.
        Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}").experiment_id("warm-up")
        for repeat in range(args.repeats):
            fits = serial(args.epochs)
            serial_s = sum(fits)
            one = through_driver(args.epochs, 1, Path(tmp), f"r{repeat}")
            two = through_driver(args.epochs, 2, Path(tmp), f"r{repeat}")
            ceiling = two_processes(args.epochs)
            per_trial = serial_s / N_TRIALS
            figures["serial_per_trial"].append(per_trial)
            figures["startup"].append(one.startup_s)
            figures["overhead"].append(one.span_s / N_TRIALS - per_trial)
            tracked = one.durations()
            figures["steady"].append(statistics.median(tracked[1:]) - statistics.median(fits))
            figures["first_extra"].append(tracked[0] - statistics.median(tracked[1:]))
            figures["gap"].append(statistics.median(one.gaps()))
            figures["concurrency"].append(one.span_s / two.span_s)
            figures["vs_serial"].append(serial_s / two.span_s)
            figures["ceiling"].append(serial_s / ceiling)
            print(
                f"repeat {repeat + 1}: serial {serial_s:.1f} s, driver spans {one.span_s:.1f} s "
                f"(1 concurrent) and {two.span_s:.1f} s (2), plain processes {ceiling:.1f} s",
                flush=True,
            )
    ray.shutdown()

    print(f"# {N_TRIALS} trials: digits MLP (128, 128), VL-uniform, {args.epochs} epochs each")
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    print(f"# Ray start-up (not charged to the sweeps): {ray_start:.1f} s")
    print(f"# median [min, max] over {args.repeats} repeat(s)")
    print(
        f"serial time per trial:                        {spread(figures['serial_per_trial'], ' s')}"
    )
    print(f"sweep start-up (call to first trial's start): {spread(figures['startup'], ' s')}")
    print(f"per-trial overhead, marginal (1 concurrent):  {spread(figures['overhead'], ' s')}")
    print(f"  of which between trials (median gap):      {spread(figures['gap'], ' s', 3)}")
    print(f"per-trial overhead, steady (median trial):    {spread(figures['steady'], ' s')}")
    print(f"  the first trial's extra (a fresh process):  {spread(figures['first_extra'], ' s')}")
    print(f"2 concurrent vs 1 concurrent, trials' span:   {spread(figures['concurrency'], 'x')}")
    print(f"2 concurrent vs serial loop:                  {spread(figures['vs_serial'], 'x')}")
    print(
        f"2 plain processes vs serial (this machine's ceiling): {spread(figures['ceiling'], 'x')}"
    )


if __name__ == "__main__":
    main()
