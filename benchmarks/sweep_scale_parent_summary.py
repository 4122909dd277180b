"""How the sweep's parent-run summary grows with its trials.

    python benchmarks/sweep_scale_parent_summary.py --json parent_summary.json

`Tracker.finish_sweep` with an outcome of N trial summaries (MLflow on SQLite), at 100, 1,000
and 10,000 trials, printed with its ratio to the smallest size, in this run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _sweep_scale_common import (
    epoch_metrics,
    fmt_ratio,
    header,
    parser,
    positive_int,
    quality,
    random_params,
    ratio,
    search_spec,
    write_figures,
)

from sweeps.records import SweepOutcome, TrialSummary, best_trials, reported_metrics
from sweeps.tracking import Tracker


def made_up_trials(n: int, rng: random.Random) -> list[TrialSummary]:
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
    return trials


def parent_summary_level(args: argparse.Namespace) -> dict[str, Any]:
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
            trials = made_up_trials(n, rng)
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
                "finish_s": statistics.median(samples),
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


def main() -> None:
    options = parser(__doc__)
    options.add_argument(
        "--summary-trials", nargs="+", type=positive_int, default=[100, 1000, 10000]
    )
    options.add_argument("--summary-repeats", type=positive_int, default=3)
    args = options.parse_args()
    header("parent_summary", ["mlflow"])
    write_figures("parent_summary", args, parent_summary_level(args))


if __name__ == "__main__":
    main()
