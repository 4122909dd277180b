"""How soon a sweep's driver sees its stop flag, and how soon it has stopped (CPU, local Ray).

    .venv/bin/python benchmarks/stop_latency.py --repeats 5

Each repeat runs a digits sweep whose trials are far longer than the measurement, raises the
stop flag at a random moment once the first trial has reported, and records when the driver
first read the flag as raised (it polls it between Tune steps, at most every stop_poll_s) and
when `run_sweep` returned with Tune's state saved. The baseline is stop_poll_s itself: the
README promises the flag is seen within about a second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ray

from sweeps import DriverOptions, Limits, parse_spec, run_sweep

SPEC = {
    "name": "stop-latency",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [32]}},
    "method": "map",
    "fixed": {"epochs": 400, "batch_size": 256, "lr": 0.003, "device": "cpu"},
    "budget": {"max_trials": 2, "max_concurrent_trials": 1},
    "resources": {"cpu": 1},
    "ensemble": {"size": 0},
}


def one_stop(root: Path, index: int, stop_poll_s: float, rng: random.Random) -> dict[str, float]:
    raised_at: list[float] = []
    seen_at: list[float] = []
    reported = threading.Event()

    def on_trial(event) -> None:
        if event.epoch >= 1:
            reported.set()

    def should_stop() -> bool:
        if raised_at and not seen_at:
            seen_at.append(time.monotonic())
        return bool(raised_at)

    def raise_flag() -> None:
        reported.wait()
        time.sleep(rng.uniform(0.0, 2.0))
        raised_at.append(time.monotonic())

    threading.Thread(target=raise_flag, daemon=True).start()
    options = DriverOptions(
        tracking_uri=f"sqlite:///{root / f'mlflow-{index}.db'}",
        storage_path=str(root / "tune"),
        stop_poll_s=stop_poll_s,
        quiet=True,
    )
    spec = parse_spec({**SPEC, "name": f"stop-latency-{index}"}, Limits())
    outcome = run_sweep(spec, options, on_trial=on_trial, should_stop=should_stop)
    returned = time.monotonic()
    assert outcome.status == "stopped", outcome.reason
    return {"seen_s": seen_at[0] - raised_at[0], "stopped_s": returned - raised_at[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stop-poll-s", type=float, default=DriverOptions.stop_poll_s)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [one_stop(Path(tmp), i, args.stop_poll_s, rng) for i in range(args.repeats)]
    finally:
        ray.shutdown()
    print(
        f"stop flag raised at a random moment; {args.repeats} repeats; poll every "
        f"{args.stop_poll_s:g} s"
    )
    print(f"{'':<34}{'median':>9}{'max':>9}{'max / poll':>12}")
    for key, label in (
        ("seen_s", "raised → seen by the driver (s)"),
        ("stopped_s", "raised → run_sweep returned (s)"),
    ):
        values = [row[key] for row in rows]
        top = max(values)
        print(
            f"{label:<34}{statistics.median(values):>9.3f}{top:>9.3f}"
            f"{top / args.stop_poll_s:>12.2f}"
        )


if __name__ == "__main__":
    main()
