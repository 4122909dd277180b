"""A real MLflow tracking server for the tests (SQLite backend, local artifacts)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from service.launcher import free_port
from tests.helpers import poll_until


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> MlflowServer:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        self.process = subprocess.Popen(
            [
                mlflow, "server", "--workers=1", "--host=127.0.0.1", f"--port={self.port}",
                f"--backend-store-uri=sqlite:///{self.root / 'server.db'}",
                f"--artifacts-destination={self.root / 'artifacts'}",
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() reaches the server workers
        )  # fmt: skip

        def up() -> bool:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            assert self.process is not None and self.process.poll() is None, (
                "the MLflow server exited"
            )
            return False

        poll_until(up, timeout_s, "the MLflow server answering /health", interval_s=0.5)
        return self

    def stop(self, kill: bool = False) -> None:
        # `mlflow server` runs the server in child processes; killing only the CLI left them
        # serving.
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(timeout=30)


@contextlib.contextmanager
def serving(
    model_uri: str,
    tracking_uri: str,
    log: Path,
    cwd: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` (``--env-manager local``) from ``cwd`` with
    ``environ`` (default this process's); yields its URL."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # MLflow starts `uvicorn` from the PATH
    env = {
        **(os.environ if environ is None else environ),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mlflow_cli = str(bin_dir / "mlflow")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                mlflow_cli, "models", "serve", "-m", model_uri,
                "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
            ],
            cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:

            def up() -> bool:
                try:
                    if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                assert process.poll() is None, log.read_text()
                return False

            poll_until(up, 120, "mlflow models serve answering /ping", interval_s=0.5)
            yield url
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
