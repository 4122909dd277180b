"""What a sweep's Ray Job is given: the driver's variables, and the code bundle its spec names
as the runtime environment of the driver and every trial (tests/service/test_own_code.py runs
it on Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.code_store import CodeBundleMissing, CodeStore
from service.launcher import LocalRayHead, RayJobs
from sweeps.code import pack_directory

ENV = {"GRADREG_VAR_DIR": "/srv/var", "MLFLOW_DISABLE_TELEMETRY": "true"}


def stored_bundle(tmp_path: Path) -> tuple[CodeStore, str]:
    source = tmp_path / "src" / "mynets"
    source.mkdir(parents=True)
    (source / "mixer.py").write_text("def build(): ...\n")
    store = CodeStore(str(tmp_path / "code"), tmp_path / "cache")
    return store, store.put(pack_directory(tmp_path / "src"))


def test_a_sweep_without_a_bundle_gets_the_drivers_variables_only(tmp_path):
    jobs = RayJobs(
        "http://127.0.0.1:1", "/venv/bin/python", ENV, CodeStore(str(tmp_path), tmp_path)
    )
    assert jobs.runtime_env(None) == {"env_vars": ENV}
    assert jobs.runtime_env({"digest": None, "requirements": []}) == {"env_vars": ENV}


def test_a_bundle_is_the_jobs_working_directory_with_its_requirements(tmp_path):
    store, digest = stored_bundle(tmp_path)
    jobs = RayJobs("http://127.0.0.1:1", "/venv/bin/python", ENV, store)
    env = jobs.runtime_env({"digest": digest, "requirements": ["einops==0.8.2"]})
    assert env["working_dir"] == str(store.local_path(digest))
    assert Path(env["working_dir"]).is_absolute() and env["working_dir"].endswith(".zip")
    assert env["env_vars"] == ENV
    assert env["pip"]["packages"] == ["einops==0.8.2"]
    assert "pip" not in jobs.runtime_env({"digest": digest, "requirements": []})


def test_a_bundle_the_store_lost_is_named(tmp_path):
    store, _ = stored_bundle(tmp_path)
    jobs = RayJobs("http://127.0.0.1:1", "/venv/bin/python", ENV, store)
    lost = "sha256:" + "e" * 64
    with pytest.raises(CodeBundleMissing, match=f"no code bundle {lost}"):
        jobs.runtime_env({"digest": lost, "requirements": []})


def test_the_local_heads_places_are_absolute(tmp_path, monkeypatch):
    """The embedded head's drivers and trials inherit its environment, and their working
    directory is a bundle's: GRADREG_DATA_DIR=./data must reach them as the API's data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADREG_DATA_DIR", "./data")
    monkeypatch.setenv("GRADREG_STUDY_STORAGE", "sqlite:///var/optuna.db")
    head = LocalRayHead(tmp_path / "head.json")
    env = head.environment()
    assert env["GRADREG_DATA_DIR"] == str(tmp_path / "data")
    assert env["GRADREG_STUDY_STORAGE"] == f"sqlite:///{tmp_path}/var/optuna.db"
    assert env["PATH"] == os.environ["PATH"]
