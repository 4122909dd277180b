"""The environment variables the sweep engine reads (prefix ``GRADREG_``), in one place."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gradreg import settings as gradreg_settings


class SweepSettings(BaseSettings):
    """Where sweeps keep their state and how much one sweep may ask for.

    The caps bound what a spec may request; the service shares them with the driver.
    """

    model_config = SettingsConfigDict(env_prefix="GRADREG_", extra="ignore")

    var_dir: Path = Field(Path("var"), description="local state: MLflow SQLite, Tune results")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: SQLite under var_dir"
    )
    storage_path: str | None = Field(
        None, description="Ray Tune storage (path or URI); default: var_dir/ray_results"
    )
    ray_address: str | None = Field(None, description="Ray cluster; default: a local instance")
    study_storage: str | None = Field(
        None,
        description="where sweeps keep their Optuna studies: an SQLAlchemy URL, or 'memory'; "
        "default: beside the service's store, else beside Tune's state (sweeps.study)",
    )
    max_trials: int = Field(1000, ge=1)
    max_concurrent_trials: int = Field(64, ge=1)
    max_time_budget_s: float = Field(7 * 24 * 3600, gt=0)
    max_epochs: int = Field(10_000, ge=1)
    max_trial_cpus: float = Field(64.0, gt=0, description="CPUs one trial may ask for")
    max_trial_gpus: float = Field(8.0, ge=0, description="GPUs one trial may ask for")
    placement_timeout_s: float = Field(
        600.0, gt=0, description="how long a trial may wait for resources before the sweep fails"
    )
    store_flush_s: float = Field(
        0.25,
        ge=0,
        le=60,
        description="how often a driver hands its queued trial events to the store, at most "
        "(one transaction per flush); a client sees a report this much later, plus the write",
    )

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.var_dir / 'mlflow.db').absolute()}"

    def resolved_storage_path(self) -> str:
        if self.storage_path:
            return absolute_storage(self.storage_path)
        return str((self.var_dir / "ray_results").absolute())

    def data_root(self) -> Path:
        """Spec data directories must lie inside this one (GRADREG_DATA_DIR)."""
        return gradreg_settings.data_dir()


def absolute_storage(location: str) -> str:
    """Ray Tune needs an absolute path or a URI such as s3://bucket/prefix."""
    if "://" in location:
        return location
    return str(Path(location).expanduser().absolute())


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute: a SQLite database
    (``sqlite:///mlflow.db``) or a plain directory. Trials may run in another directory than
    the driver (a code bundle is their working directory), and must find the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = uri[len(prefix) :]
        if path and not path.startswith(":memory:"):
            return prefix + os.path.abspath(Path(path).expanduser())
        return uri
    # A plain path is a file store; "databricks" and "databricks-uc" name a workspace.
    if "://" not in uri and ":" not in uri.split("/")[0] and not uri.startswith("databricks"):
        return os.path.abspath(Path(uri).expanduser())
    return uri
