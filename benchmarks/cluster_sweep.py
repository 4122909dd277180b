"""A 4-trial sweep on the local cluster against the same sweep on the embedded default.

- embedded: `python -m sweeps run SPEC`, a local Ray in the process's machine, MLflow on SQLite
  and Tune's state on local disk (the CLI's defaults): the baseline;
- cluster: the same spec POSTed to the API of `localcluster` (a Ray head and two workers in
  network namespaces, Tune's state in moto's S3 bucket, MLflow's server on PostgreSQL),
  timed from the POST to the sweep's final status.
Both ask for one CPU per trial, 4 at a time: the cluster's two workers each declare the
machine's CPUs, so it runs all 4 at once where the embedded Ray runs 2. Root only (the cluster).
Prints one JSON object; --repeats runs each that many times, alternating, and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcluster.harness import API_URL, Cluster  # noqa: E402
from localcluster.sample import digits_sweep  # noqa: E402


def spec(name: str, epochs: int) -> dict:
    return digits_sweep(name, trials=4, concurrent=4, gpu=0, epochs=epochs, hidden=(128,))


def embedded_s(document: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "spec.json")
        path.write_text(json.dumps(document))
        env = {**os.environ, "GRADREG_VAR_DIR": str(Path(tmp, "var")), "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sweeps", "run", str(path), "--quiet"],
            cwd=tmp,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def cluster_s(cluster: Cluster, document: dict) -> float:
    headers = {"Authorization": f"Bearer {cluster.api_token}"}
    with httpx.Client(base_url=API_URL, headers=headers, timeout=30) as api:
        started = time.perf_counter()
        sweep_id = api.post("/v1/sweeps", json=document).json()["id"]
        while (state := api.get(f"/v1/sweeps/{sweep_id}").json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    if state["status"] != "succeeded":
        raise SystemExit(f"the cluster's sweep ended {state['status']}: {state['reason']}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cluster = Cluster(state=Path(tempfile.mkdtemp(prefix="gradreg-bench-cluster-")))
    started = time.perf_counter()
    cluster.up()
    up_s = time.perf_counter() - started
    embedded, clustered = [], []
    try:
        for repeat in range(args.repeats):
            embedded.append(embedded_s(spec(f"bench-embedded-{repeat}", args.epochs)))
            clustered.append(cluster_s(cluster, spec(f"bench-cluster-{repeat}", args.epochs)))
    finally:
        cluster.down()
    result = {
        "trials": 4,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "embedded_s": round(statistics.median(embedded), 2),
        "cluster_s": round(statistics.median(clustered), 2),
        "cluster_over_embedded": round(
            statistics.median(clustered) / statistics.median(embedded), 2
        ),
        "cluster_up_s": round(up_s, 1),
        "samples": {"embedded_s": embedded, "cluster_s": clustered},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
