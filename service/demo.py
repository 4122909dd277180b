"""`make demo` / `make stop`: the whole product on one machine, then a sweep through it.

    python -m service.demo start   # MLflow UI :5000, API :8000 (+ its Ray head), digits sweep
    python -m service.demo stop    # stops what start started

Processes run detached with their pid and log files in var/run/, so `stop` finds them later.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.launcher import process_alive

RUN = Path("var/run")
MLFLOW_URL = "http://127.0.0.1:5000"
API_URL = "http://127.0.0.1:8000"
EXAMPLE = "sweeps/examples/digits-vl-uniform.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--spec", default=EXAMPLE)
    args = parser.parse_args(argv)
    if args.action == "stop":
        return stop()
    return start(args.spec)


def _launch(name: str, command: list[str], env: dict[str, str]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    pid_file = RUN / f"{name}.pid"
    if pid_file.exists() and process_alive(int(pid_file.read_text())):
        print(f"{name} is already running (pid {pid_file.read_text().strip()})")
        return
    # Logs are the owner's alone: they hold what the services print about themselves.
    descriptor = os.open(RUN / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    pid_file.write_text(str(process.pid))
    print(f"started {name} (pid {process.pid}, log {RUN / f'{name}.log'})")


def _wait(url: str, name: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{name} did not come up in {timeout_s:.0f} s; see {RUN}/{name}.log")


def start(spec: str) -> int:
    python = sys.executable
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    Path("var/mlartifacts").mkdir(parents=True, exist_ok=True)
    _launch(
        "mlflow",
        [
            str(Path(python).with_name("mlflow")),
            "server",
            "--workers=1",
            "--host=127.0.0.1",
            "--port=5000",
            f"--backend-store-uri=sqlite:///{Path('var/mlflow-server.db').absolute()}",
            f"--artifacts-destination={Path('var/mlartifacts').absolute()}",
        ],
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    _wait(f"{MLFLOW_URL}/health", "mlflow")
    _launch("api", [python, "-m", "service"], {**env, "GRADREG_TRACKING_URI": MLFLOW_URL})
    _wait(f"{API_URL}/readyz", "api")
    print(f"\nAPI {API_URL} (docs: {API_URL}/docs), MLflow UI {MLFLOW_URL}")
    print("API token: in var/api_token, owner-only (`cat var/api_token`)\n")
    done = subprocess.run(submit_command(python, spec))
    print("\nBrowse the sweep's runs at its MLflow runs link above; `make stop` stops everything.")
    return done.returncode


def submit_command(python: str, spec: str) -> list[str]:
    """The demo's submission. No token on the command line, where `ps` would show it: the
    client reads var/api_token itself."""
    return [python, "-m", "service", "submit", spec, "--wait", "--url", API_URL]


def stop() -> int:
    for name in ("api", "mlflow"):
        pid_file = RUN / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if process_alive(pid):
            os.kill(pid, signal.SIGTERM)  # the API stops its Ray head on the way out
            deadline = time.monotonic() + 60
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if process_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            print(f"stopped {name} (pid {pid})")
        pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
