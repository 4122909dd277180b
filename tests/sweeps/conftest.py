"""Fixtures for the sweep engine: one local Ray for the session, MLflow on SQLite per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import DriverOptions


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def driver_options(tmp_path: Path, tracking_uri: str) -> DriverOptions:
    return DriverOptions(tracking_uri=tracking_uri, storage_path=str(tmp_path / "tune"), quiet=True)
