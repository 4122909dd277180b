"""The service's settings: every variable is read by a settings class and documented once, and
the API's settings are the sweep engine's plus its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from service.settings import ClientSettings, DriverJobSettings, ServiceSettings, absolute_paths
from sweeps import Limits
from sweeps.settings import SweepSettings

ROOT = Path(__file__).parents[2]
CLASSES = (SweepSettings, ServiceSettings, DriverJobSettings, ClientSettings)
# Set by Ray inside a job, never by a person: README says so, .env.example does not list it.
SET_BY_RAY = {"RAY_ADDRESS"}


def variables(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads: its fields by prefix, or by alias."""
    prefix = settings.model_config.get("env_prefix", "")
    return {
        field.validation_alias if isinstance(field.validation_alias, str) else prefix + name.upper()
        for name, field in settings.model_fields.items()
    }


def readme_rows() -> list[set[str]]:
    """The names in the first column of each row of README's environment table."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| environment |"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        rows.append(set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first)))
    return rows


@pytest.mark.parametrize("settings", CLASSES, ids=lambda c: c.__name__)
def test_every_variable_is_documented_once(settings):
    rows = readme_rows()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    for name in sorted(variables(settings)):
        assert sum(name in row for row in rows) == 1, f"{name}: not once in README's table"
        if name not in SET_BY_RAY:
            assert name in listed, f"{name} is not in .env.example"


def test_the_service_reads_the_sweep_engines_settings_by_their_own_names(monkeypatch, tmp_path):
    assert variables(SweepSettings) <= variables(ServiceSettings)
    monkeypatch.setenv("GRADREG_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("GRADREG_MAX_EPOCHS", "12")
    monkeypatch.setenv("GRADREG_STORAGE_PATH", "s3://bucket/tune")
    settings = ServiceSettings()
    assert settings.var_dir == tmp_path
    assert settings.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.resolved_storage_path() == "s3://bucket/tune"
    assert Limits.from_settings(settings).max_epochs == 12


def test_a_driver_job_reads_the_cluster_ray_gives_it(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert DriverJobSettings().job_ray_address is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert DriverJobSettings().job_ray_address == "10.0.0.2:6379"


def test_the_client_reads_its_url_and_token_not_the_servers_tokens(monkeypatch):
    for name in ("GRADREG_API_URL", "GRADREG_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADREG_API_TOKENS", "server-side")
    assert (ClientSettings().url, ClientSettings().token) == ("http://127.0.0.1:8000", None)
    monkeypatch.setenv("GRADREG_API_URL", "https://api.example.org")
    monkeypatch.setenv("GRADREG_API_TOKEN", "mine")
    assert (ClientSettings().url, ClientSettings().token) == ("https://api.example.org", "mine")


def test_user_code_is_on_for_the_embedded_head_and_off_for_a_cluster_unless_set(monkeypatch):
    for name in ("GRADREG_ALLOW_USER_CODE", "GRADREG_RAY_JOBS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert ServiceSettings().user_code_allowed  # everything runs as the user who started it
    cluster = "http://ray-head:8265"
    assert not ServiceSettings(ray_jobs_url=cluster).user_code_allowed
    monkeypatch.setenv("GRADREG_ALLOW_USER_CODE", "true")
    assert ServiceSettings(ray_jobs_url=cluster).user_code_allowed
    monkeypatch.setenv("GRADREG_ALLOW_USER_CODE", "false")
    assert not ServiceSettings().user_code_allowed


def test_the_code_store_is_under_var_or_where_it_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADREG_CODE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert ServiceSettings(var_dir="var").resolved_code_store() == str(tmp_path / "var" / "code")
    monkeypatch.setenv("GRADREG_CODE_STORE", "s3://gradreg/code")
    assert ServiceSettings().resolved_code_store() == "s3://gradreg/code"
    monkeypatch.setenv("GRADREG_CODE_STORE", "bundles")
    assert ServiceSettings().resolved_code_store() == str(tmp_path / "bundles")


def test_every_place_a_driver_reads_is_absolute(monkeypatch, tmp_path):
    """With a code bundle the driver's and the trials' working directory is the bundle's: a
    relative path there would name a file inside it."""
    monkeypatch.chdir(tmp_path)
    relative = {
        "GRADREG_VAR_DIR": "var",
        "GRADREG_DATA_DIR": "./data",
        "GRADREG_CACHE_DIR": "cache",
        "GRADREG_DATABASE_URL_FILE": "secrets/url",
        "GRADREG_RAY_AUTH_TOKEN_PATH": "var/ray/token",
        "RAY_AUTH_TOKEN_PATH": "var/ray/token",
        "GRADREG_DATABASE_URL": "sqlite:///var/service.db",
        "GRADREG_TRACKING_URI": "sqlite:///var/mlflow.db?timeout=5",
        "GRADREG_STUDY_STORAGE": "sqlite+pysqlite:///var/optuna.db",
        "GRADREG_STORAGE_PATH": "var/tune",
    }
    fixed = absolute_paths({**relative, "PATH": "bin:/usr/bin"})
    assert fixed["PATH"] == "bin:/usr/bin"  # not a place of ours
    assert fixed["GRADREG_VAR_DIR"] == str(tmp_path / "var")
    assert fixed["GRADREG_DATA_DIR"] == str(tmp_path / "data")
    assert fixed["GRADREG_DATABASE_URL"] == f"sqlite:///{tmp_path}/var/service.db"
    assert fixed["GRADREG_TRACKING_URI"] == f"sqlite:///{tmp_path}/var/mlflow.db?timeout=5"
    assert fixed["GRADREG_STUDY_STORAGE"] == f"sqlite+pysqlite:///{tmp_path}/var/optuna.db"
    for name in relative:
        value = fixed[name].split("///", 1)[-1]
        assert Path(value.split("?")[0]).is_absolute(), name
    kept = {
        "GRADREG_DATABASE_URL": "postgresql+psycopg://gradreg:pw@postgres:5432/gradreg",
        "GRADREG_TRACKING_URI": "http://mlflow:5000",
        "GRADREG_STUDY_STORAGE": "memory",
        "GRADREG_STORAGE_PATH": "s3://gradreg/tune",
        "GRADREG_CACHE_DIR": "",
    }
    assert absolute_paths(kept) == kept
    assert absolute_paths({"GRADREG_TRACKING_URI": "sqlite://"}) == {
        "GRADREG_TRACKING_URI": "sqlite://"
    }


def test_the_store_url_given_relative_is_the_apis_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADREG_DATABASE_URL", "sqlite:///service.db")
    assert ServiceSettings().resolved_database_url() == f"sqlite:///{tmp_path}/service.db"
    (tmp_path / "url").write_text("sqlite:///other.db\n")
    monkeypatch.delenv("GRADREG_DATABASE_URL")
    monkeypatch.setenv("GRADREG_DATABASE_URL_FILE", str(tmp_path / "url"))
    assert ServiceSettings().resolved_database_url() == f"sqlite:///{tmp_path}/other.db"
