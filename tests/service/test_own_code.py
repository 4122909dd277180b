"""A researcher's own network through the service, end to end: real uvicorn, the service's own
Ray head and Ray Jobs, MLflow on SQLite.

The code is a copy of examples/own-model/src that is never on this process's import path: the
client packs and uploads it (`python -m service submit --code`), the sweep's Ray Job carries
it to the driver and the trials, and the registered model carries it into a fresh process.
The service is given its places relative to its working directory, as .env.example gives
them: with a bundle the driver's working directory is the bundle's, so the service must hand
them on absolute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.code import digest_of, pack_directory
from tests.helpers.api import TOKENS, ApiProcess, read_events

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "own-model"
# What a fresh process must not inherit: the user's code on the path, and MLflow's URIs, which
# mlflow.set_tracking_uri and set_registry_uri write into os.environ in an earlier test.
LEAKED = {"PYTHONPATH", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
RELATIVE_PLACES = {
    "GRADREG_VAR_DIR": "var",
    "GRADREG_DATA_DIR": "data",
    "GRADREG_CACHE_DIR": "cache",
    "GRADREG_TRACKING_URI": "sqlite:///var/mlflow.db",
    "GRADREG_DATABASE_URL": "sqlite:///var/service.db",
    "GRADREG_STORAGE_PATH": "var/tune",
}

# Run in a fresh interpreter without the code on its path: load the registered model (MLflow
# puts the code it carries on the path) and predict four classes' probabilities.
LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow, numpy as np
assert importlib.util.find_spec("mynets") is None, sys.path
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
x = np.random.default_rng(0).normal(size=(5, 1, 64)).astype("float32")
p = np.asarray(model.predict(x))
print(json.dumps({"shape": list(p.shape), "sums": p.sum(axis=1).tolist(),
                  "builder": sys.modules["mynets.mixer"].__file__}))
"""


def tiny_spec(directory: Path, name: str) -> Path:
    """examples/own-model/spec.yaml cut to 2 trials of 2 epochs on 400 signals."""
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    spec["name"] = name
    spec["dataset"]["options"]["n"] = 400
    spec["model"]["options"] = {"width": 16, "depth": 1}
    spec["fixed"]["epochs"] = 2
    spec["budget"] = {"max_trials": 2, "max_concurrent_trials": 2}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def user_code(directory: Path) -> Path:
    """A copy of the example's code, where nothing of this process looks."""
    source = directory / "their-project" / "src"
    shutil.copytree(EXAMPLE / "src", source, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def test_the_test_process_cannot_import_the_users_code():
    assert importlib.util.find_spec("mynets") is None
    assert importlib.util.find_spec("mydata") is None


def service_cli(*args: str, cwd: Path, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


def test_submit_code_runs_the_users_network_and_the_model_serves_without_it(tmp_path):
    api = ApiProcess(tmp_path / "api", extra_env=dict(RELATIVE_PLACES)).start()
    try:
        source = user_code(tmp_path)
        spec = tiny_spec(tmp_path, "own-mixer")
        done = service_cli(
            "submit",
            str(spec),
            "--code",
            str(source),
            "--wait",
            "--url",
            api.url,
            "--token",
            TOKENS[0],
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr + api.log_tail()
        digest = digest_of(pack_directory(source))
        assert f"uploaded {source}: {digest}" in done.stdout
        sweep_id = done.stdout.split("submitted ", 1)[1].split()[0]
        with api.client() as client:
            sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
            admitted = client.get(f"/v1/sweeps/{sweep_id}/spec").json()["spec"]
            items = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
        assert sweep["status"] == "succeeded", sweep["reason"]
        assert admitted["code"]["digest"] == digest
        assert [t["state"] for t in items] == ["succeeded", "succeeded"]
        # Kept where the service's relative var directory is, owner-only.
        kept = api.root / "var" / "code" / f"{digest.removeprefix('sha256:')}.zip"
        assert kept.read_bytes() == pack_directory(source)

        tracking = f"sqlite:///{api.root / 'var' / 'mlflow.db'}"
        fresh = tmp_path / "elsewhere"
        fresh.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in LEAKED}
        loaded = subprocess.run(
            [sys.executable, "-c", LOAD_AND_PREDICT, tracking, sweep["registered_model"]["uri"]],
            cwd=fresh,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert loaded.returncode == 0, loaded.stderr[-4000:]
        answer = json.loads(loaded.stdout.strip().splitlines()[-1])
        assert answer["shape"] == [5, 4]
        assert all(abs(total - 1) < 1e-5 for total in answer["sums"])
        assert not answer["builder"].startswith(str(source))  # the model's copy, not ours
    finally:
        api.stop()


def test_code_installed_on_the_nodes_needs_no_bundle(tmp_path):
    """The worker image's way: the code on every node's path, a spec without a code section,
    and a service that takes no bundles but lists the packages installed for entry points (the
    API checks their syntax and package, and never imports them)."""
    installed = user_code(tmp_path)
    env = {
        "PYTHONPATH": str(installed),
        "GRADREG_ALLOW_USER_CODE": "false",
        "GRADREG_ENTRY_POINT_PACKAGES": "mynets,mydata",
    }
    api = ApiProcess(tmp_path / "api", extra_env=env).start()
    try:
        spec = tiny_spec(tmp_path, "installed-mixer")
        done = service_cli(
            "submit", str(spec), "--wait", "--url", api.url, "--token", TOKENS[0], cwd=tmp_path
        )
        assert done.returncode == 0, done.stdout + done.stderr + api.log_tail()
        assert "succeeded" in done.stdout
        assert not (api.root / "var" / "code").exists()
    finally:
        api.stop()


def test_a_failed_preflight_fails_the_sweep_before_any_trial_with_its_reason(tmp_path):
    """The example's mixer has LayerNorm, which `fisher: per_example` has no rule for: the
    driver's preflight fails the sweep, and its reason reaches the API, the events and the
    CLI, with no trial started."""
    api = ApiProcess(tmp_path / "api").start()
    try:
        source = user_code(tmp_path)
        spec = tiny_spec(tmp_path, "own-per-example")
        document = yaml.safe_load(spec.read_text())
        document["fixed"]["fisher"] = "per_example"
        spec.write_text(yaml.safe_dump(document))
        done = service_cli(
            "submit", str(spec), "--code", str(source), "--wait",
            "--url", api.url, "--token", TOKENS[0], cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr + api.log_tail()
        assert "preflight failed at stage 'layers'" in done.stdout
        sweep_id = done.stdout.split("submitted ", 1)[1].split()[0]
        with api.client() as client:
            sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
            items = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
        assert sweep["status"] == "failed"
        assert sweep["reason"].startswith("preflight failed at stage 'layers'")
        assert "LayerNorm" in sweep["reason"] and "mynets.mixer:build" in sweep["reason"]
        assert items == []
        final = [data for kind, data in read_events(api, sweep_id) if kind == "sweep"]
        assert final[-1]["status"] == "failed"
        assert final[-1]["reason"] == sweep["reason"]
    finally:
        api.stop()
