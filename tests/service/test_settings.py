"""The service's settings: every variable is read by a settings class and documented once, and
the API's settings are the sweep engine's plus its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from service.settings import ClientSettings, DriverJobSettings, ServiceSettings
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
