"""Tune's saved state on S3 as a sweep runs: how often it is saved, its size, how far behind it is.

    python benchmarks/tune_state_s3.py                  # 4 digits trials of 150 epochs, twice
    python benchmarks/tune_state_s3.py --epochs 400 --json out.json

Runs the same sweep twice, embedded (one Ray instance in this process), with Tune's storage in
an S3 bucket on moto's server (started here, on loopback), a checkpoint every epoch:
- ``earlier``: the driver's Tune callbacks before this change, rebuilt here: Tune's
  `JsonLoggerCallback` (every report appended to each trial's result file) and a checkpoint
  pruner that deleted in Tune's loop and left Tune listing what it deleted;
- ``now``: the driver as it is (`sweeps.driver.tune_callbacks`).

For each it prints the state saves (how many, their time, the largest period the adaptive rule
set), the final state file and result files in the bucket, and the lag of the bucket's state: a
thread reads the state file from the bucket every 0.2 s, and for each trial's start and end (as
the driver's trial events report them) the lag is the time until the bucket's state says so.
That lag is what a lost head loses. Ratios are now / earlier, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKET = "gradreg"
STATUS_OF_EVENT = {"running": "RUNNING", "succeeded": "TERMINATED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Any:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    import boto3

    client = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)
    try:
        yield client
    finally:
        server.terminate()
        server.wait(timeout=30)


class BucketWatcher:
    """When the bucket's experiment state first named each (trial, status)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self.first_seen: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BucketWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):  # a state mid-upload reads as nothing new
                for trial_id, status in self.read():
                    self.first_seen.setdefault((trial_id, status), time.monotonic())

    def read(self) -> list[tuple[str, str]]:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix)
        named = []
        for entry in listing.get("Contents", []):
            if "/experiment_state-" not in entry["Key"]:
                continue
            body = self.client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
            for trial_json, _ in json.loads(body)["trial_data"]:
                trial = json.loads(trial_json)
                named.append((trial["trial_id"], trial["status"]))
        return named


def earlier_callbacks(sweep: str, spec: Any) -> list[Any]:
    from ray.tune.logger import JsonLoggerCallback

    from sweeps.checkpoints import CheckpointPruner, delete_older_checkpoints
    from sweeps.progress import SweepCallback

    class EarlierPruner(CheckpointPruner):
        def get_state(self) -> None:  # deleted in Tune's loop; Tune kept listing them
            for trial_id, named in self._named_by_last_save.items():
                if self._pruned.get(trial_id) != named:
                    delete_older_checkpoints(named.filesystem, named.trial_dir, named.index)
                    self._pruned[trial_id] = named
            self._named_by_last_save = dict(self._latest)

    return [SweepCallback(sweep, spec), JsonLoggerCallback(), EarlierPruner()]


@contextlib.contextmanager
def timed_saves(saves: list[dict[str, float]]) -> Any:
    """Record each state save Tune makes: when, how long, the period it set after."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    original = Manager.sync_up_experiment_state

    def timed(self: Any, save_fn: Any, force: bool = False, wait: bool = False) -> None:
        before = self._last_save_time
        started = time.monotonic()
        original(self, save_fn, force, wait)
        if self._last_save_time != before:
            saves.append(
                {"at": started, "s": time.monotonic() - started, "period": self._checkpoint_period}
            )

    Manager.sync_up_experiment_state = timed
    try:
        yield
    finally:
        Manager.sync_up_experiment_state = original


def run_one(label: str, args: argparse.Namespace, client: Any, root: Path) -> dict[str, Any]:
    import sweeps.driver
    from localcluster.sample import digits_sweep
    from sweeps import run_sweep
    from sweeps.driver import DriverOptions
    from sweeps.spec.parse import parse_spec

    name = f"state-{label}"
    document = digits_sweep(
        name,
        trials=args.trials,
        concurrent=args.concurrent,
        gpu=0,
        epochs=args.epochs,
        hidden=(128,),
    )
    document["tracking"] = {"log_reliability_diagram": False}
    spec = parse_spec(document)
    options = DriverOptions(
        tracking_uri=f"sqlite:///{root / f'{label}.db'}",
        storage_path=f"s3://{BUCKET}/tune",
        quiet=True,
    )
    events: dict[tuple[str, str], float] = {}

    def on_trial(event: Any) -> None:
        status = STATUS_OF_EVENT.get(event.state)
        if status:
            events.setdefault((event.trial_id, status), time.monotonic())

    saves: list[dict[str, float]] = []
    callbacks = sweeps.driver.tune_callbacks
    if label == "earlier":
        sweeps.driver.tune_callbacks = earlier_callbacks
    try:
        with timed_saves(saves), BucketWatcher(client, f"tune/{name}/") as watcher:
            started = time.monotonic()
            outcome = run_sweep(spec, options, on_trial=on_trial)
            wall = time.monotonic() - started
            time.sleep(1.0)  # the watcher's last look
    finally:
        sweeps.driver.tune_callbacks = callbacks
    assert outcome.status == "succeeded", outcome.reason
    lags = [watcher.first_seen.get(key, float("inf")) - at for key, at in sorted(events.items())]
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"tune/{name}/")["Contents"]
    sizes = {entry["Key"]: entry["Size"] for entry in listing}
    periodic = saves[:-1]  # the last is Tune's forced save at the end
    return {
        "wall_s": wall,
        "saves": len(saves),
        "save_p50_s": statistics.median(s["s"] for s in periodic),
        "save_max_s": max(s["s"] for s in periodic),
        "period_max_s": max(s["period"] for s in periodic),
        "state_bytes": sum(v for k, v in sizes.items() if "/experiment_state-" in k),
        "result_bytes": sum(v for k, v in sizes.items() if k.endswith("/result.json")),
        "lag_p50_s": statistics.median(lags),
        "lag_max_s": max(lags),
        "trial_events": len(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import ray

    print(
        f"# {os.cpu_count()} CPUs, ray {ray.__version__}; {args.trials} digits trials of "
        f"{args.epochs} epochs, {args.concurrent} at a time, a checkpoint every epoch; Tune's "
        "storage in moto's S3 server on loopback",
        flush=True,
    )
    figures: dict[str, Any] = {}
    with s3_server() as client, tempfile.TemporaryDirectory() as tmp:
        ray.init(
            address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False
        )
        try:
            for label in ("earlier", "now"):
                figures[label] = run_one(label, args, client, Path(tmp))
        finally:
            ray.shutdown()
    keys = (
        ("wall_s", "wall s", "{:.1f}"),
        ("saves", "saves", "{:d}"),
        ("save_p50_s", "save p50 s", "{:.3f}"),
        ("save_max_s", "save max s", "{:.2f}"),
        ("period_max_s", "period max s", "{:.1f}"),
        ("state_bytes", "state KB", None),
        ("result_bytes", "result files KB", None),
        ("lag_p50_s", "bucket lag p50 s", "{:.1f}"),
        ("lag_max_s", "bucket lag max s", "{:.1f}"),
    )
    print(f"\n{'':>18}{'earlier':>12}{'now':>12}{'now/earlier':>13}")
    ratios = {}
    for key, title, form in keys:
        before, now = figures["earlier"][key], figures["now"][key]
        show = (lambda v: f"{v / 1e3:,.0f}") if form is None else form.format
        ratios[key] = now / before if before else None
        shown = "-" if ratios[key] is None else f"{ratios[key]:.2f}x"
        print(f"{title:>18}{show(before):>12}{show(now):>12}{shown:>13}")
    figures["ratio"] = ratios
    print(
        "  saves: every save of Tune's state, the forced one at the end included; a save's "
        "time and the period: the periodic saves only; bucket lag: from a trial's start or "
        "end (the driver's event) to the bucket's state saying so, over every start and end"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
