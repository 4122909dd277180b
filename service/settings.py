"""The environment variables the service reads, in one place: the API's (prefix ``GRADREG_``,
the sweep engine's included), its driver jobs' and its command-line client's."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy as sa
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gradreg.files import write_private
from service.quotas import Quotas
from sweeps.settings import SweepSettings, absolute_storage


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
    allow_user_code: bool | None = Field(
        None,
        description="whether POST /v1/code and a spec's code section are accepted; default: "
        "yes for the embedded local head (no GRADREG_RAY_JOBS_URL), no for a cluster",
    )
    max_code_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, description="the largest code bundle POST /v1/code takes"
    )
    max_code_files: int = Field(2000, ge=1, description="the most files a code bundle may hold")
    code_store: str | None = Field(
        None,
        description="where code bundles are kept: a directory, or a bucket URI such as "
        "s3://gradreg/code (pyarrow.fs, AWS_* from the environment); default: var_dir/code",
    )
    entry_point_packages: str = Field(
        "",
        description="comma-separated top-level packages installed in the worker image whose "
        "entry points a spec may name while code is off (GRADREG_ALLOW_USER_CODE)",
    )
    allow_code_requirements: bool = Field(
        True, description="whether a spec's code.requirements (pip, on every node) is accepted"
    )
    token_key: str | None = Field(
        None,
        description="the secret the store's token digests are keyed with; default: one made "
        "once in var_dir/secrets/token_key. Every API replica needs the same one",
    )
    quota_active_sweeps: int = Field(
        4, ge=1, description="a user's sweeps admitted to run or running at once; more queue"
    )
    quota_queued_sweeps: int = Field(
        20, ge=1, description="a user's sweeps waiting as queued; more are refused (429)"
    )
    quota_concurrent_trials: int | None = Field(
        None, ge=0, description="a user's trials running at once, over all their sweeps"
    )
    quota_gpus: float | None = Field(
        None, ge=0, description="the GPUs a user's running trials hold at once"
    )

    @field_validator("python")
    @classmethod
    def _absolute_python(cls, value: str) -> str:
        # A bare `python` entrypoint ran without Ray on the job's PATH ("No module named 'ray'").
        if not Path(value).is_absolute():
            raise ValueError(f"GRADREG_PYTHON must be an absolute path, got {value!r}")
        return value

    @property
    def user_code_allowed(self) -> bool:
        """GRADREG_ALLOW_USER_CODE, else whether the service runs its own local head: there
        everything runs as the user who started it, while on a cluster a bundle is code run on
        machines the operator shares, so the operator turns it on."""
        if self.allow_user_code is not None:
            return self.allow_user_code
        return self.ray_jobs_url is None

    @property
    def installed_code(self) -> frozenset[str]:
        """GRADREG_ENTRY_POINT_PACKAGES: the packages an entry point may name while code is
        off."""
        return frozenset(p.strip() for p in self.entry_point_packages.split(",") if p.strip())

    def resolved_code_store(self) -> str:
        """The code store's absolute directory, or its bucket URI as given."""
        if self.code_store:
            return absolute_storage(self.code_store)
        return str((self.var_dir / "code").absolute())

    def quotas(self) -> Quotas:
        """The quotas of a user who has none of their own (`service.quotas`)."""
        return Quotas(
            active_sweeps=self.quota_active_sweeps,
            queued_sweeps=self.quota_queued_sweeps,
            concurrent_trials=self.quota_concurrent_trials,
            gpus=self.quota_gpus,
        )

    def resolved_token_key(self) -> bytes:
        """GRADREG_TOKEN_KEY, else the key kept in var_dir/secrets/token_key (made once,
        owner-only)."""
        if self.token_key:
            return self.token_key.encode()
        path = self.var_dir.absolute() / "secrets" / "token_key"
        if not path.exists():
            # Another process may make it first: then use theirs.
            with contextlib.suppress(FileExistsError):
                write_private(path, secrets.token_hex(32) + "\n", exclusive=True)
        return path.read_text().strip().encode()

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.api_tokens.split(",") if t.strip())

    def resolved_database_url(self) -> str:
        """The store's URL; a SQLite file's path absolute (the drivers' working directory may
        be a code bundle, not the API's)."""
        if self.database_url:
            return absolute_url(self.database_url)
        if self.database_url_file is not None:
            return absolute_url(self.database_url_file.read_text().strip())
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
SECRET_VARIABLES = (
    "GRADREG_API_TOKENS",
    "GRADREG_API_TOKEN",
    "GRADREG_DATABASE_URL",
    "GRADREG_TOKEN_KEY",
)


# Variables naming a file or directory on this machine, and variables holding a URL that may be
# a SQLite file's or a path (MLflow's tracking URI, Tune's storage): read by the API's drivers
# and trials, whose working directory is a code bundle's when the sweep has one, so every one
# is made absolute against the API's (`absolute_paths`).
PATH_VARIABLES = (
    "GRADREG_VAR_DIR",
    "GRADREG_DATA_DIR",
    "GRADREG_CACHE_DIR",
    "GRADREG_DATABASE_URL_FILE",
    "GRADREG_RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_TOKEN_PATH",
)
URL_VARIABLES = ("GRADREG_DATABASE_URL", "GRADREG_TRACKING_URI", "GRADREG_STUDY_STORAGE")
STORAGE_VARIABLES = ("GRADREG_STORAGE_PATH",)


def absolute_url(url: str) -> str:
    """``url`` with a SQLite file's relative path made absolute (``sqlite:///var/x.db`` →
    ``sqlite:////here/var/x.db``), and a bare path such as ``./mlruns`` (MLflow's file store)
    made absolute; an in-memory database, a server's URL or a word such as ``memory`` as it
    is."""
    if "://" not in url:
        # A word (``memory``, ``databricks``) or a scheme of its own (``file:...``) stays.
        looks_like_path = "/" in url or url.startswith((".", "~"))
        if ":" in url or not looks_like_path:
            return url
        return str(Path(url).expanduser().absolute())
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return url
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:":
        return url
    if database.startswith("file:") or Path(database).is_absolute():
        return url
    absolute = parsed.set(database=str(Path(database).expanduser().absolute()))
    return absolute.render_as_string(hide_password=False)


def absolute_paths(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with every place on this machine absolute, against this process's
    working directory: the PATH_VARIABLES, the URL_VARIABLES' SQLite files and paths, the
    STORAGE_VARIABLES' paths (a bucket URI stays as it is)."""
    fixed = dict(environment)
    for name, value in environment.items():
        if not value:
            continue
        if name in PATH_VARIABLES:
            fixed[name] = str(Path(value).expanduser().absolute())
        elif name in URL_VARIABLES:
            fixed[name] = absolute_url(value)
        elif name in STORAGE_VARIABLES:
            fixed[name] = absolute_storage(value)
    return fixed


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
