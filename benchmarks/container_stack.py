"""The compose stack on Podman: its images' sizes and build times, its start-up, and a sweep in
containers against the same sweep on the local cluster (processes), in one run.

- build, cold: docker/build-local.sh into an empty Podman store of its own (no base image, no
  layers, no pip cache), as on a new CI machine; PyPI's and Debian's downloads included;
- build, cached: the same script again on the store the stack runs from, inputs unchanged;
- sizes: each image compose runs, as Podman reports it;
- up: `docker compose up --wait` until every healthcheck passes (localcluster/containers.py);
- sweep: benchmarks/cluster_sweep.py's 4-trial digits sweep POSTed to the API container and
  timed to its final status; then the stack is removed (`down -v`), the local cluster started
  and the same sweep timed there (two worker nodes each, one CPU per trial, 4 at a time).
Root only. Prints one JSON object. --skip-cold leaves the cold build out (it downloads again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcluster.containers import BUILD, ContainerStack, podman  # noqa: E402
from localcluster.harness import API_URL, Cluster  # noqa: E402
from localcluster.sample import digits_sweep  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


def spec(name: str, epochs: int) -> dict:
    """benchmarks/cluster_sweep.py's sweep."""
    return digits_sweep(name, trials=4, concurrent=4, gpu=0, epochs=epochs, hidden=(128,))


def build(times: Path, storage_conf: Path | None = None) -> dict[str, float]:
    env = {**os.environ, "GRADREG_BUILD_TIMES": str(times)}
    if storage_conf is not None:
        env["CONTAINERS_STORAGE_CONF"] = str(storage_conf)
    started = time.perf_counter()
    subprocess.run([str(BUILD)], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    steps = json.loads(times.read_text())
    return {"total_s": round(time.perf_counter() - started, 1), **steps}


def cold_build(tmp: Path) -> dict[str, float]:
    """The build into a store of its own, removed afterwards."""
    store = tmp / "store"
    conf = tmp / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n'
    )
    try:
        return build(tmp / "cold.json", conf)
    finally:
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
        subprocess.run(["podman", "system", "reset", "--force"], env=env, check=False)
        shutil.rmtree(store, ignore_errors=True)


def image_sizes(stack: ContainerStack) -> dict[str, float]:
    """Each image the compose file runs, in MB as Podman counts it (layers shared or not)."""
    model = json.loads(stack.compose("config", "--format", "json"))
    sizes = {}
    for image in sorted({service["image"] for service in model["services"].values()}):
        size = podman("image", "inspect", "--format", "{{.Size}}", image).strip()
        sizes[image] = round(int(size) / 1e6)
    return sizes


def sweep_s(api_url: str, token: str, document: dict) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as api:
        started = time.perf_counter()
        response = api.post("/v1/sweeps", json=document)
        response.raise_for_status()
        sweep_id = response.json()["id"]
        while (state := api.get(f"/v1/sweeps/{sweep_id}").json())["status"] not in FINAL:
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    if state["status"] != "succeeded":
        raise SystemExit(f"sweep {document['name']} ended {state['status']}: {state['reason']}")
    return round(elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    result: dict = {"trials": 4, "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="gradreg-bench-containers-") as tmp:
        if not args.skip_cold:
            result["build_cold"] = cold_build(Path(tmp))
        build(Path(tmp, "warm.json"))  # what the cold run would have left in this store
        result["build_cached"] = build(Path(tmp, "cached.json"))
        stack = ContainerStack(state=Path(tmp, "stack"))
        try:
            result["compose_up_to_healthy_s"] = round(stack.up(), 1)
            result["image_mb"] = image_sizes(stack)
            result["containers_sweep_s"] = sweep_s(
                stack.api_url, stack.api_token, spec("bench-containers", args.epochs)
            )
        finally:
            stack.down()
        cluster = Cluster(state=Path(tmp, "cluster"))
        started = time.perf_counter()
        cluster.up()
        result["localcluster_up_s"] = round(time.perf_counter() - started, 1)
        try:
            result["localcluster_sweep_s"] = sweep_s(
                API_URL, cluster.api_token, spec("bench-localcluster", args.epochs)
            )
        finally:
            cluster.down()
    result["containers_over_localcluster"] = round(
        result["containers_sweep_s"] / result["localcluster_sweep_s"], 2
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
