"""The environment variables the service reads, in one place: the API's (prefix ``GRADREG_``,
the sweep engine's included), its driver jobs' and its command-line client's."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gradreg.files import write_private
from sweeps.settings import SweepSettings


class ServiceSettings(SweepSettings):
    """The API's settings: the sweep engine's (`SweepSettings`: var_dir, tracking_uri, the caps,
    ...), which it shares with its drivers, and its own."""

    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8000, ge=0, le=65535)
    api_tokens: str = Field(
        "", description="comma-separated bearer tokens; none means loopback-only"
    )
    database_url: str | None = Field(None, description="default: SQLite under var_dir")
    database_url_file: Path | None = Field(
        None, description="a file holding the store URL (how the API hands it to its drivers)"
    )
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="base of the run links")
    ray_jobs_url: str | None = Field(
        None, description="Ray dashboard URL for job submission; none: start a local head"
    )
    ray_auth_token_path: Path | None = Field(
        None, description="Ray's cluster token file; default: var_dir/ray/auth_token"
    )
    python: str = Field(sys.executable, description="absolute interpreter for the sweep driver")
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    api_threads: int = Field(4, ge=1, description="threads serving the synchronous routes")
    reconcile_interval_s: float = Field(5.0, gt=0)
    readiness_interval_s: float = Field(
        3.0, gt=0, description="how often /readyz's probes run (it answers from the latest)"
    )
    cancel_grace_s: float = Field(30.0, ge=0)
    max_attempts: int = Field(3, ge=1, description="driver restarts before a sweep fails")
    max_active_sweeps: int = Field(
        4, ge=1, description="sweeps whose drivers run at once; later ones wait as pending"
    )

    @field_validator("python")
    @classmethod
    def _absolute_python(cls, value: str) -> str:
        # A bare `python` entrypoint ran without Ray on the job's PATH ("No module named 'ray'").
        if not Path(value).is_absolute():
            raise ValueError(f"GRADREG_PYTHON must be an absolute path, got {value!r}")
        return value

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.api_tokens.split(",") if t.strip())

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.database_url_file is not None:
            return self.database_url_file.read_text().strip()
        return f"sqlite:///{(self.var_dir / 'service.db').absolute()}"

    @property
    def store_configured(self) -> bool:
        """Whether the store was named (a URL or its file), not left to the local default."""
        return bool(self.database_url) or self.database_url_file is not None

    def resolved_token_path(self) -> Path:
        return (self.ray_auth_token_path or self.var_dir / "ray" / "auth_token").absolute()

    def check_listen_address(self) -> None:
        """Refuse to serve a non-loopback address without tokens: it would run anyone's code."""
        if self.tokens:
            return
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback:
            raise ValueError(
                f"refusing to listen on {self.host} without API tokens; set GRADREG_API_TOKENS "
                "or listen on 127.0.0.1"
            )


class DriverJobSettings(ServiceSettings):
    """A sweep driver's settings as a Ray Job (`service.worker`): the API's, and the address of
    the cluster its job runs on, which Ray sets in a job's environment."""

    job_ray_address: str | None = Field(
        None,
        validation_alias="RAY_ADDRESS",
        description="set by Ray inside a job: its cluster (default: 'auto', the local one)",
    )


class ClientSettings(BaseSettings):
    """What `python -m service submit|status|spec` reads: where the API is and how to call it.
    Flags (--url, --token) go over these."""

    model_config = SettingsConfigDict(env_prefix="GRADREG_API_", extra="ignore")

    url: str = Field("http://127.0.0.1:8000", description="the API's base URL")
    token: str | None = Field(None, description="a bearer token of the API's GRADREG_API_TOKENS")


# What the service's own processes must not pass on to the Ray head, its drivers and trials.
SECRET_VARIABLES = ("GRADREG_API_TOKENS", "GRADREG_API_TOKEN", "GRADREG_DATABASE_URL")


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` and a newline to ``path`` readable by its owner only (replacing what was
    there)."""
    return write_private(path, text + "\n")


def prepare_ray_auth(token_path: Path) -> Path:
    """Create the Ray cluster token (owner-only) if missing and point Ray's clients at it.

    Ray reads these variables when it is imported, so call this before importing ray.
    """
    if not token_path.exists():
        write_private(token_path, secrets.token_hex(32), exclusive=True)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return token_path
