"""What the sweep driver costs: the same 8 trials as a plain loop over fit and through the driver.

    python benchmarks/sweep_overhead.py                 # 8 digits trials, 20 epochs each
    python benchmarks/sweep_overhead.py --epochs 200    # longer trials

(a) a serial loop over gradreg's fit, one torch thread, no tracking;
(b) the driver (Ray Tune + Optuna + MLflow on SQLite) with 1 trial at a time, run twice:
    a 1-trial sweep (the sweep's one-off start-up: Tuner, trial actor, imports, MLflow parent)
    and the 8-trial sweep; the difference gives the marginal cost of one more trial;
(c) the driver with 2 concurrent trials (one CPU and one torch thread each);
(d) the machine's own ceiling for (c): two plain processes, each looping over half the trials.
Every mode trains the same configurations (given to the driver as initial points). Ray is
started once, before (b); its start-up is printed but not charged to the sweeps.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import ray
import torch

from gradreg.train import fit
from sweeps import DriverOptions, Limits, parse_spec, run_sweep
from sweeps.resolve import trial_config
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


def serial(epochs: int) -> float:
    torch.set_num_threads(1)
    spec = parse_spec(sweep_document(epochs, 1, "serial"), Limits())
    started = time.perf_counter()
    for values in points():
        fit(trial_config(spec, values))
    return time.perf_counter() - started


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


def through_driver(epochs: int, concurrent: int, root: Path, trials: int = N_TRIALS) -> float:
    name = f"bench-{concurrent}-{trials}"
    spec = parse_spec(sweep_document(epochs, concurrent, name, trials), Limits())
    options = DriverOptions(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        storage_path=str(root / "tune"),
        quiet=True,
    )
    started = time.perf_counter()
    outcome = run_sweep(spec, options)
    elapsed = time.perf_counter() - started
    if outcome.counts() != {"succeeded": trials}:
        raise RuntimeError(f"benchmark sweep did not finish cleanly: {outcome.counts()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    serial_s = serial(args.epochs)
    ceiling = two_processes(args.epochs)
    per_trial = serial_s / N_TRIALS
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        # The tracking database exists before a sweep in any real deployment: create it now.
        Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}").experiment_id("warm-up")
        single = through_driver(args.epochs, 1, Path(tmp), trials=1)
        one = through_driver(args.epochs, 1, Path(tmp))
        two = through_driver(args.epochs, 2, Path(tmp))
    ray.shutdown()

    startup = single - per_trial
    marginal = (one - single) / (N_TRIALS - 1) - per_trial
    print(f"# {N_TRIALS} trials: digits MLP (128, 128), VL-uniform, {args.epochs} epochs each")
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    print(f"# Ray start-up (not charged to the sweeps): {ray_start:.1f} s")
    print(f"{'mode':<30} {'wall s':>8} {'trials/min':>11} {'× serial':>9}")
    rows = [
        ("serial loop over fit", serial_s, N_TRIALS),
        ("driver, 1 trial", single, 1),
        ("driver, 1 concurrent", one, N_TRIALS),
        ("driver, 2 concurrent", two, N_TRIALS),
        ("2 plain processes (ceiling)", ceiling, N_TRIALS),
    ]
    for label, seconds, trials in rows:
        rate = trials * 60 / seconds
        print(
            f"{label:<30} {seconds:>8.1f} {rate:>11.1f} {rate / (N_TRIALS * 60 / serial_s):>9.2f}"
        )
    print(f"serial time per trial:                      {per_trial:.2f} s")
    print(f"sweep start-up (1-trial sweep minus 1 trial): {startup:.2f} s")
    print(f"per-trial overhead, marginal (1 concurrent):  {marginal:.2f} s")
    print(
        f"per-trial overhead, start-up spread over {N_TRIALS}: {(one - serial_s) / N_TRIALS:.2f} s"
    )
    print(f"2 concurrent vs serial throughput, end to end:     {serial_s / two:.2f}x")
    print(f"2 concurrent vs serial throughput, after start-up: {serial_s / (two - startup):.2f}x")
    print(f"2 plain processes vs serial (this machine's ceiling): {serial_s / ceiling:.2f}x")


if __name__ == "__main__":
    main()
