"""Read latency of the API under load while a sweep runs, and POST → first trial running.

    python benchmarks/api_load.py                  # 50 clients for 10 s
    python benchmarks/api_load.py --clients 20 --seconds 5
    python benchmarks/api_load.py --database-url 'postgresql+psycopg://postgres@127.0.0.1/test?options=-csearch_path%3Dbench'

Starts `python -m service` (SQLite store, its own Ray head) in a temporary directory, warms the
Ray head with a one-trial sweep, then:
1. posts a digits sweep and times POST → the first trial reported running (polled every 50 ms);
2. while that sweep trains, `--clients` concurrent clients alternate GET /v1/sweeps/{id} and
   GET /v1/sweeps?limit=20 for `--seconds`; prints p50/p90/p99 latency and requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from service.launcher import free_port

TOKEN = "benchmark-token-" + "x" * 24


def sweep(name: str, epochs: int, trials: int) -> dict:
    return {
        "name": name,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [128, 128]}},
        "method": "vl-uniform",
        "fixed": {"epochs": epochs, "batch_size": 128, "lr": 0.001, "device": "cpu"},
        "parameters": {
            "noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
        },
        "budget": {"max_trials": trials, "max_concurrent_trials": 1},
        "resources": {"cpu": 1},
    }


def wait_until(client: httpx.Client, sweep_id: str, test, timeout_s: float, poll_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.get(f"/v1/sweeps/{sweep_id}").json()
        if test(state):
            return state
        time.sleep(poll_s)
    raise TimeoutError(f"sweep {sweep_id} did not get there in {timeout_s} s: {state}")


async def load(
    url: str, sweep_id: str, clients: int, seconds: float, think_s: float = 0.0
) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def reader(index: int) -> None:
            paths = [f"/v1/sweeps/{sweep_id}", "/v1/sweeps?limit=20"]
            turn = index
            if think_s:
                # Pollers are not in step in life: each starts at its own point of the cycle
                # (started together, 50 pollers send bursts of 50 requests that queue).
                await asyncio.sleep(random.uniform(0, think_s))
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await client.get(paths[turn % 2], timeout=30)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                turn += 1
                if think_s:
                    await asyncio.sleep(think_s * random.uniform(0.5, 1.5))

        await asyncio.gather(*(reader(i) for i in range(clients)))
    return latencies


def wrk(url: str, sweep_id: str, clients: int, seconds: float) -> list[str]:
    """The same reads from `wrk` (C, Debian package), when installed: a load generator that
    does not itself compete with the API for the 2 cores the way 50 Python clients do."""
    if shutil.which("wrk") is None:
        return ["wrk not installed (apt-get install wrk): skipped"]
    lines = []
    for path in (f"/v1/sweeps/{sweep_id}", "/v1/sweeps?limit=20"):
        done = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{clients}",
                f"-d{int(seconds)}s",
                "--latency",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                url + path,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        keep = ("Latency ", "50%", "90%", "99%", "Requests/sec", "Non-2xx")
        lines.append(f"GET {path.replace(sweep_id, '{id}')}:")
        lines += [
            f"    {ln.strip()}" for ln in done.stdout.splitlines() if ln.strip().startswith(keep)
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--think-s", type=float, default=1.0, help="pause between polls")
    parser.add_argument(
        "--database-url", help="the API's store (GRADREG_DATABASE_URL); default SQLite"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "GRADREG_VAR_DIR": str(Path(tmp) / "var"),
            "GRADREG_PORT": str(port),
            "GRADREG_API_TOKENS": TOKEN,
            "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        if args.database_url:
            env["GRADREG_DATABASE_URL"] = args.database_url
        log = open(Path(tmp) / "api.log", "wb")  # noqa: SIM115 (the process writes to it)
        api = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=tmp, env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit("the API did not come up")
                time.sleep(0.5)

            warm = client.post("/v1/sweeps", json=sweep("warm-up", 1, 1)).json()["id"]
            wait_until(client, warm, lambda s: s["status"] == "succeeded", 180, 0.5)

            started = time.perf_counter()
            measured = client.post("/v1/sweeps", json=sweep("under-load", 400, 4)).json()["id"]
            seen = wait_until(
                client, measured, lambda s: s["counts"].get("running", 0) >= 1, 120, 0.05
            )
            first_trial = time.perf_counter() - started
            stamps = {k: datetime.fromisoformat(seen[k]) for k in ("created_at", "started_at")}
            to_driver = (stamps["started_at"] - stamps["created_at"]).total_seconds()

            single = asyncio.run(load(url, measured, 1, args.seconds))
            closed = asyncio.run(load(url, measured, args.clients, args.seconds))
            polling = asyncio.run(load(url, measured, args.clients, args.seconds, args.think_s))
            native = wrk(url, measured, args.clients, args.seconds)
            client.post(f"/v1/sweeps/{measured}/cancel")
        finally:
            client.close()
            api.terminate()
            try:
                api.wait(timeout=90)
            except subprocess.TimeoutExpired:
                print((Path(tmp) / "api.log").read_text()[-3000:], file=sys.stderr)
                api.kill()
                raise

    store = "PostgreSQL" if args.database_url else "SQLite"
    print(f"# {os.cpu_count()} CPUs; API: uvicorn (1 process), {store} store, local Ray head")
    print(f"POST -> first trial running (warm Ray head): {first_trial:.2f} s  (goal < 10 s)")
    print(f"  of which POST -> driver started (status running): {to_driver:.2f} s")
    print(f"{args.clients} clients alternating GET sweep / GET list while a sweep trains:")
    for label, latencies in (
        ("1 client, back to back (the service time)", single),
        ("back to back (no pause)", closed),
        (f"polling (about {args.think_s:g} s between requests)", polling),
    ):
        ms = sorted(1000 * x for x in latencies)
        p = statistics.quantiles(ms, n=100)
        print(f"  {label}: {len(ms)} requests ({len(ms) / args.seconds:.0f}/s)")
        print(
            f"    latency ms: p50 {p[49]:.1f}  p90 {p[89]:.1f}  p99 {p[98]:.1f}  max {ms[-1]:.1f}"
        )
        print(f"    p99 / goal (50 ms): {p[98] / 50:.2f}")
    print(f"  wrk, {args.clients} connections back to back, each path on its own:")
    for line in native:
        print(f"    {line}")


if __name__ == "__main__":
    main()
