"""Sweeps of a researcher's own network (issue 25), end to end: real Ray, real MLflow on SQLite.

The user's packages live in ``tmp_path``, on no import path of this test process: each sweep
runs in a process of its own (the CLI, or a small driver script), which ships them to the
trials as its Ray runtime environment. The registered model is then loaded in a fresh
process, from another directory, with the code directory gone.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from sweeps import resume_sweep
from sweeps.cli import main
from sweeps.code import CodeBundle, pack_directory
from sweeps.driver import DriverOptions
from sweeps.store import DirectoryStore
from sweeps.tracking import CODE_DIGEST_TAG, ERROR_TAG, PREFLIGHT_TAG, ROLE_TAG
from tests.helpers.mlflow_server import serving
from tests.helpers.user_code import write_package, write_user_code

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own-model"
USER_MODULES = ("mynets", "mydata", "tnets", "tdata", "tbroken", "tinylayers")


# ---------------------------------------------------------------- helpers


def example_spec(tmp_path: Path, name: str, **changes: Any) -> Path:
    """The example's spec, small: 2 trials of 2 epochs on 300 signals, one at a time."""
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    spec["name"] = name
    spec["dataset"]["options"]["n"] = 300
    spec["model"]["options"] = {"width": 16, "depth": 1}
    spec["fixed"]["epochs"] = 2
    spec["parameters"] = {"noise_scale": spec["parameters"]["noise_scale"]}
    spec["search"] = {"algorithm": "random", "seed": 0}
    spec["budget"] = {"max_trials": 2, "max_concurrent_trials": 1}
    spec["ensemble"] = {"size": 0}
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without PYTHONPATH: a fresh process finds gradreg and sweeps
    (installed) and nothing of the user's. Without MLflow's URIs either: mlflow.set_tracking_uri
    and set_registry_uri write them into os.environ, so an earlier test's server (test_model's)
    would be the fresh process's registry."""
    leaked = {"PYTHONPATH", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
    env = {k: v for k, v in os.environ.items() if k not in leaked}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", GRADREG_VAR_DIR=str(tmp_path / "var"))
    return env


def run_python(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def sweep_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m sweeps ARGS`` from a directory of its own, recording under tmp_path."""
    options = ["--tracking-uri", uri(tmp_path), "--storage-path", str(tmp_path / "tune")]
    return run_python(
        ["-m", "sweeps", *args, *options], tmp_path / "elsewhere", env or clean_env(tmp_path)
    )


def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def outcome_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode in (0, 1), done.stderr[-4000:]
    start = done.stdout.index("{")  # --json: the outcome is the whole of standard output
    return json.loads(done.stdout[start:])


def runs_by_role(tracking_uri: str, experiment: str) -> dict[str, list[Any]]:
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    roles: dict[str, list[Any]] = {"sweep": [], "trial": []}
    for run in runs:
        roles[run.data.tags[ROLE_TAG]].append(run)
    return roles


def signals(n: int = 12) -> np.ndarray:
    """Raw inputs like the example loader's, made here (the loader is not importable)."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 4 * np.pi, 64, dtype=np.float32)
    return (np.sin(t)[None, None, :] + rng.normal(0, 0.3, (n, 1, 64))).astype(np.float32)


def assert_no_user_code_here() -> None:
    imported = [m for m in USER_MODULES if m in sys.modules]
    assert imported == [], f"the test process imported the user's code: {imported}"
    assert all(importlib.util.find_spec(m) is None for m in USER_MODULES)


# ---------------------------------------------------------------- the example through the CLI


@pytest.mark.slow
def test_the_example_sweeps_through_the_cli_and_its_model_serves_without_the_code(tmp_path):
    src = shutil.copytree(EXAMPLE / "src", tmp_path / "src")
    spec = example_spec(tmp_path, "own-mixer")

    done = sweep_cli(tmp_path, "run", str(spec), "--code", str(src), "--json")
    outcome = outcome_of(done)

    assert outcome["status"] == "succeeded", outcome["reason"]
    assert outcome["counts"] == {"succeeded": 2}
    assert_no_user_code_here()
    # The preflight ran before the trials and reported the network.
    [report] = outcome["preflight"]
    assert report["model"] == "mynets.mixer:build" and report["dataset"] == "mydata.signals:load"
    assert report["n_parameters"] > 0 and report["step_memory_bytes"] > 0
    assert report["input_shape"] == [1, 64] and report["n_classes"] == 4
    assert "preflight passed: mynets.mixer:build on mydata.signals:load" in done.stderr

    # The bundle is kept beside Tune's state, content-addressed, as the directory packs.
    bundle = CodeBundle.pack(src)
    kept = tmp_path / "tune" / "own-mixer" / "code" / bundle.file_name
    assert kept.read_bytes() == bundle.data
    record = json.loads((tmp_path / "tune" / "own-mixer" / "sweep.json").read_text())
    assert record["spec"]["code"] == {"digest": bundle.digest, "requirements": []}

    runs = runs_by_role(uri(tmp_path), "own-mixer")
    [parent] = runs["sweep"]
    assert parent.data.tags[PREFLIGHT_TAG] == "passed"
    assert parent.data.tags["gradreg.preflight.n_parameters"] == str(report["n_parameters"])
    assert parent.data.tags["gradreg.preflight.input_shape"] == "1x64"
    assert parent.data.tags["gradreg.preflight.n_classes"] == "4"
    assert len(runs["trial"]) == 2
    for trial in runs["trial"]:
        assert trial.data.tags[CODE_DIGEST_TAG] == bundle.digest
        (dataset,) = trial.inputs.dataset_inputs
        source = json.loads(dataset.dataset.profile)["source"]
        assert dataset.dataset.name == "mydata.signals:load"
        assert source["entry_point"] == "mydata.signals:load"
        assert dataset.dataset.digest == source["digest"].removeprefix("sha256:")[:16]

    # The registered model carries the code: it loads and predicts in a fresh process, from
    # another directory, with the code directory gone.
    assert outcome["registered_model"]["uri"] == "models:/own-mixer/1"
    shutil.rmtree(src)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    np.save(fresh / "x.npy", signals())
    load = textwrap.dedent(
        f"""
        import sys, mlflow, numpy as np
        mlflow.set_tracking_uri({uri(tmp_path)!r})
        model = mlflow.pyfunc.load_model("models:/own-mixer/1")
        probs = model.predict(np.load("x.npy"))
        print(sys.modules["mynets"].__file__)
        print(probs.to_json(orient="split"))
        """
    )
    loaded = run_python(["-c", load], fresh, clean_env(tmp_path))
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    where, table = loaded.stdout.strip().splitlines()[-2:]
    assert "/artifacts/code/mynets/" in where  # the model's own copy of the code
    pyfunc = json.loads(table)
    assert pyfunc["columns"] == ["sine", "square", "triangle", "sawtooth"]
    probs = np.array(pyfunc["data"])
    assert probs.shape == (12, 4) and np.allclose(probs.sum(axis=1), 1)

    predicted = run_python(
        [
            "-m",
            "sweeps",
            "predict",
            "--model-uri",
            "models:/own-mixer/1",
            "--input",
            "x.npy",
            "--tracking-uri",
            uri(tmp_path),
        ],
        fresh,
        clean_env(tmp_path),
    )
    assert predicted.returncode == 0, predicted.stderr[-4000:]
    lines = predicted.stdout.strip().splitlines()
    assert lines[0] == "p_sine,p_square,p_triangle,p_sawtooth,predicted,entropy"
    cli_probs = np.array([[float(v) for v in line.split(",")[:4]] for line in lines[1:]])
    assert np.allclose(cli_probs, probs, atol=1e-8)  # the same predictive, seeded the same

    # mlflow models serve, from the same fresh directory and environment.
    body = {"inputs": signals().tolist()}
    with serving("models:/own-mixer/1", uri(tmp_path), tmp_path / "serve.log", fresh,
                 clean_env(tmp_path)) as url:  # fmt: skip
        answer = httpx.post(f"{url}/invocations", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    served = np.array([[row[name] for name in pyfunc["columns"]] for row in rows])
    assert np.allclose(served, probs, atol=1e-6)


@pytest.mark.slow
def test_the_cli_reports_a_failed_preflight_and_starts_no_trial(tmp_path):
    # The example's mixer has LayerNorm, which per_example has no rule for.
    src = shutil.copytree(EXAMPLE / "src", tmp_path / "src")
    spec = example_spec(tmp_path, "own-per-example", fixed={"fisher": "per_example"})

    done = sweep_cli(tmp_path, "run", str(spec), "--code", str(src))

    assert done.returncode == 1, done.stderr[-4000:]
    report = done.stdout
    assert report.startswith("sweep own-per-example: failed (preflight failed at stage 'layers'")
    assert "LayerNorm" in report and "mynets.mixer:build" in report
    assert not any((tmp_path / "tune" / "own-per-example").glob("own-per-example-t*"))
    assert runs_by_role(uri(tmp_path), "own-per-example")["trial"] == []


# ---------------------------------------------------------------- resume keeps its bundle

STOP_AFTER_FIRST = """
import sys
from sweeps import DriverOptions, load_spec_file, run_sweep
from sweeps.code import CodeBundle

spec_file, src, tracking_uri, storage = sys.argv[1:]
finished = []
outcome = run_sweep(
    load_spec_file(spec_file),
    # The stop is read at every step of Tune's loop, not once a second: a trial of this size
    # can end within a second, and the sweep must stop with one still to run.
    DriverOptions(tracking_uri=tracking_uri, storage_path=storage, quiet=True,
                  code=CodeBundle.pack(src), stop_poll_s=0.0),
    on_trial=lambda event: finished.append(event) if event.state == "succeeded" else None,
    should_stop=lambda: bool(finished),
)
print(outcome.status)
"""


@pytest.mark.slow
def test_a_resume_ships_the_bundle_the_sweep_started_with(tmp_path):
    src = shutil.copytree(EXAMPLE / "src", tmp_path / "src")
    spec = example_spec(tmp_path, "own-resume", budget={"max_trials": 3})
    started = CodeBundle.pack(src)
    script = tmp_path / "stop_after_first.py"
    script.write_text(STOP_AFTER_FIRST)

    stopped = run_python(
        [str(script), str(spec), str(src), uri(tmp_path), str(tmp_path / "tune")],
        tmp_path / "elsewhere",
        clean_env(tmp_path),
    )
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    assert stopped.stdout.strip().splitlines()[-1] == "stopped"

    # The directory changes: its builder now refuses. The resume runs the code it started with.
    mixer = src / "mynets" / "mixer.py"
    mixer.write_text(
        mixer.read_text().replace(
            '    """gradreg\'s builder contract', '    raise RuntimeError("the new code")\n    """x'
        )
    )
    changed = CodeBundle.pack(src)
    assert changed.digest != started.digest
    options = DriverOptions(tracking_uri=uri(tmp_path), storage_path=str(tmp_path / "tune"))
    with pytest.raises(ValueError, match=f"ships the same, not {changed.digest}"):
        resume_sweep("own-resume", DriverOptions(**{**options.__dict__, "code": changed}))

    outcome = outcome_of(sweep_cli(tmp_path, "resume", "own-resume", "--json"))

    assert outcome["status"] == "succeeded", outcome["reason"]
    assert outcome["counts"] == {"succeeded": 3}
    trials = runs_by_role(uri(tmp_path), "own-resume")["trial"]
    assert len(trials) == 3
    assert {t.data.tags[CODE_DIGEST_TAG] for t in trials} == {started.digest}
    assert_no_user_code_here()


# ---------------------------------------------------------------- each failure, before trial 1

BROKEN = {
    "tbroken/__init__.py": "",
    "tbroken/imports.py": """
        import not_installed_anywhere_xyz


        def build(input_shape, n_classes):
            return None
        """,
    "tbroken/shapes.py": """
        import math

        from torch import nn


        def build(input_shape, n_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes + 1))
        """,
    "tbroken/loaders.py": """
        import numpy as np


        def load(n=60):
            x = np.zeros((n, 1, 16), dtype=np.float32)
            y = np.arange(n - 1) % 3
            return x, y
        """,
}

# Ray starts once, with the bundle as its runtime environment, as a service's Ray Job
# carries it: the driver sets none (DriverOptions.code is None). Each sweep is refused by its
# preflight; one goes through run_stored, whose store keeps the outcome.
FAILING_SWEEPS = """
import json, sys, time
import ray
from sweeps import DirectoryStore, DriverOptions, parse_spec, run_sweep
from sweeps.code import runtime_env
from sweeps.store import run_stored

bundle, specs, tracking_uri, storage, store = sys.argv[1:]
ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env(bundle))
options = DriverOptions(tracking_uri=tracking_uri, storage_path=storage, quiet=True)
found = {}
for document in json.load(open(specs)):
    started = time.monotonic()
    spec = parse_spec(document)
    if document["name"] == "stored":
        DirectoryStore(store).submit("stored", spec)
        outcome = run_stored("stored", DirectoryStore(store), options)
    else:
        outcome = run_sweep(spec, options)
    found[spec.name] = {**outcome.to_dict(), "seconds": time.monotonic() - started}
user = [m for m in ("tnets", "tdata", "tbroken") if m in sys.modules]
print(json.dumps({"outcomes": found, "driver_imported": user}, default=str))
"""


def failing(name: str, **sections: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "dataset": {"entry_point": "tdata.waves:load", "options": {"n": 96}},
        "model": {"entry_point": "tnets.mixer:build", "options": {"width": 8}},
        "method": "vl-uniform",
        "fixed": {"epochs": 2, "batch_size": 32, "noise_scale": 0.01, "device": "cpu"},
        "budget": {"max_trials": 2, "max_concurrent_trials": 1},
        "ensemble": {"size": 0},
    }
    document.update(sections)
    return document


@pytest.mark.slow
def test_each_failure_fails_the_sweep_before_any_trial_naming_it(tmp_path):
    code = write_package(write_user_code(tmp_path / "code"), BROKEN)
    bundle_file = tmp_path / "bundle.zip"
    bundle_file.write_bytes(pack_directory(code))
    digest = CodeBundle(bundle_file.read_bytes(), "").digest
    cases = {
        "no-module": failing("no-module", model={"entry_point": "tnets_gone.mixer:build"}),
        "no-function": failing("no-function", model={"entry_point": "tnets.mixer:buidl"}),
        "import-error": failing("import-error", model={"entry_point": "tbroken.imports:build"}),
        "wrong-shape": failing("wrong-shape", model={"entry_point": "tbroken.shapes:build"}),
        "lengths": failing("lengths", dataset={"entry_point": "tbroken.loaders:load"}),
        "per-example": failing(
            "per-example",
            fixed={"epochs": 2, "batch_size": 32, "noise_scale": 0.01, "device": "cpu"},
            parameters={"fisher": {"type": "categorical", "choices": ["sampled", "per_example"]}},
        ),
        "stored": failing("stored", model={"entry_point": "tbroken.shapes:build"}),
    }
    for document in cases.values():
        document["code"] = {"digest": digest}  # as the service sets it
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps(list(cases.values())))
    script = tmp_path / "failing_sweeps.py"
    script.write_text(FAILING_SWEEPS)
    store = tmp_path / "store"

    done = run_python(
        [
            str(script),
            str(bundle_file),
            str(specs),
            uri(tmp_path),
            str(tmp_path / "tune"),
            str(store),
        ],
        tmp_path / "elsewhere",
        clean_env(tmp_path),
    )

    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["driver_imported"] == []  # the driver never imported the user's code
    outcomes = found["outcomes"]
    expected = {
        "no-module": ("import", "tnets_gone.mixer:build", "no module or package named"),
        "no-function": ("import", "tnets.mixer:buidl", "build"),
        "import-error": ("import", "tbroken.imports:build", "not_installed_anywhere_xyz"),
        "wrong-shape": ("forward", "tbroken.shapes:build", "(32, 4)"),
        "lengths": ("data", "tbroken.loaders:load", "60 examples but y holds 59 labels"),
        "per-example": ("layers", "tnets.mixer:build", "LayerNorm"),
        "stored": ("forward", "tbroken.shapes:build", "(32, 4)"),
    }
    for name, (stage, entry_point, words) in expected.items():
        outcome = outcomes[name]
        reason = outcome["reason"]
        assert outcome["status"] == "failed", (name, reason)
        assert reason.startswith(f"preflight failed at stage {stage!r}"), (name, reason)
        assert entry_point in reason and words in reason, (name, reason)
        assert outcome["trials"] == [], name  # no trial started
        runs = runs_by_role(uri(tmp_path), name)
        assert runs["trial"] == [], name
        [parent] = runs["sweep"]
        assert parent.data.tags[PREFLIGHT_TAG] == "failed"
        assert parent.data.tags[ERROR_TAG].startswith("preflight failed")
        assert parent.info.status == "FAILED"
    # The user's exception is quoted with their frames.
    assert 'tbroken/imports.py", line 1' in outcomes["import-error"]["reason"]
    assert "fisher='per_example'" in outcomes["per-example"]["reason"]
    # The store has the reason (GET /v1/sweeps/{id} reads it), and no trial event.
    stored = json.loads((store / "stored" / "outcome.json").read_text())
    assert stored["reason"] == outcomes["stored"]["reason"]
    assert DirectoryStore(store).trial_events("stored") == []


def test_a_spec_naming_both_a_name_and_an_entry_point_is_refused_naming_both(tmp_path, capsys):
    spec = example_spec(tmp_path, "both", model={"name": "mlp"})
    assert main(["run", str(spec), "--code", str(EXAMPLE / "src")]) == 2
    err = capsys.readouterr().err
    assert "model: model.name and model.entry_point exclude each other" in err


# ---------------------------------------------------------------- requirements from a wheel

TINY = """
import torch


class Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
"""


def write_wheel(directory: Path, name: str = "tinylayers", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (METADATA, WHEEL, RECORD) written with zipfile: no build
    tool, no network."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": TINY,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }

    def record(text: str) -> str:
        digest = hashlib.sha256(text.encode()).digest()
        return f"sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(text)}"

    lines = [f"{path},{record(text)}" for path, text in files.items()] + [f"{info}/RECORD,,"]
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", "\n".join(lines) + "\n")
    return wheel


@pytest.mark.slow
def test_a_requirement_from_a_local_wheel_is_installed_for_the_trials(tmp_path):
    wheel = write_wheel(tmp_path)
    src = shutil.copytree(EXAMPLE / "src", tmp_path / "src")
    mixer = src / "mynets" / "mixer.py"
    mixer.write_text(
        mixer.read_text()
        .replace("from torch import nn\n", "from torch import nn\n\nfrom tinylayers import Scale\n")
        .replace(
            "return self.head(self.norm(self.blocks(tokens)).mean(dim=1))",
            "return Scale(1.0)(self.head(self.norm(self.blocks(tokens)).mean(dim=1)))",
        )
    )
    spec = example_spec(tmp_path, "own-wheel", code={"requirements": [str(wheel)]})

    started = time.monotonic()
    outcome = outcome_of(sweep_cli(tmp_path, "run", str(spec), "--code", str(src), "--json"))
    seconds = time.monotonic() - started

    assert outcome["status"] == "succeeded", outcome["reason"]
    assert outcome["counts"] == {"succeeded": 2}
    assert importlib.util.find_spec("tinylayers") is None  # installed for the trials only
    print(f"sweep with a pip runtime environment: {seconds:.0f} s")
    # The registered model lists the wheel among its requirements.
    # Both URIs: an earlier test's set_registry_uri (test_model's server) outlives it.
    mlflow.set_tracking_uri(uri(tmp_path))
    mlflow.set_registry_uri(uri(tmp_path))
    listed = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/own-wheel/1/requirements.txt", dst_path=str(tmp_path / "req")
        )
    ).read_text()
    assert str(wheel) in listed.splitlines()
