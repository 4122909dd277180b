"""docker-compose.yml run on a real container engine: Podman, driven by `docker compose`.

The images come from docker/build-local.sh (the project's own, and stand-ins for the
third-party ones); docker/podman/engine.sh serves Podman's Docker-compatible API and runs the
healthchecks; compose runs the file as users run it, with docker/podman.yml on top for what
this machine and the stand-ins cannot do (no GPU, no MinIO admin API, a lower open-files
limit). `ContainerStack(state).up()` and `.down()`; root only.

The compose project is the file's own (`gradreg`), so `up` refuses while any container,
network or volume of that project exists, and `down` removes exactly those (`down -v`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradreg.files import write_private
from localcluster.compose import ROOT, compose_binary

PROJECT = "gradreg"
OVERRIDE = ROOT / "docker" / "podman.yml"
ENGINE = ROOT / "docker" / "podman" / "engine.sh"
BUILD = ROOT / "docker" / "build-local.sh"
STATE = Path(os.environ.get("GRADREG_PODMAN_STATE", "/run/gradreg-podman"))
SOCKET = Path(os.environ.get("GRADREG_PODMAN_SOCKET", str(STATE / "podman.sock")))
LABEL = f"com.docker.compose.project={PROJECT}"
WORKERS = 2


class StackError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings(api_port: int, mlflow_port: int) -> dict[str, str]:
    """The .env an operator fills in, with fresh secrets (docker/ci.env names every variable
    compose insists on), the API and the MLflow UI published on loopback ports of this machine,
    and the CPU image."""
    lines = (ROOT / "docker" / "ci.env").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    return {
        **{name: secrets.token_hex(16) for name in names},
        "TORCH_VARIANT": "cpu",
        "GRADREG_API_BIND": "127.0.0.1",
        "GRADREG_API_PORT": str(api_port),
        "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW_PUBLIC_HOST": f"127.0.0.1:{mlflow_port}",
        "GRADREG_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",
    }


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise StackError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def build_images(times_file: Path | None = None, timeout_s: float = 3600) -> None:
    """docker/build-local.sh: every image compose runs (cached in Podman's store)."""
    env = {**os.environ, "GRADREG_BUILD_TIMES": str(times_file or "")}
    done = subprocess.run(
        [str(BUILD)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise StackError(f"{BUILD} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


@dataclass
class Container:
    name: str
    service: str
    state: str  # running, exited, ...
    health: str  # healthy, starting, unhealthy, or "" without a healthcheck
    exit_code: int
    address: str  # on the compose network
    restarts: int


@dataclass
class ContainerStack:
    state: Path
    started_engine: bool = field(default=False, init=False)

    # --- settings --------------------------------------------------------------------------

    @property
    def env_file(self) -> Path:
        return self.state / ".env"

    def setting(self, name: str) -> str:
        for line in self.env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return value
        raise KeyError(name)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.setting('GRADREG_API_PORT')}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.setting('MLFLOW_PORT')}"

    @property
    def api_token(self) -> str:
        return self.setting("GRADREG_API_TOKENS")

    # --- the engine and compose ------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        command = [str(compose_binary()), "--env-file", str(self.env_file)]
        command += ["-f", str(ROOT / "docker-compose.yml"), "-f", str(OVERRIDE), *args]
        env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0"}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise StackError(
                f"docker compose {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stderr[-6000:]}\n{self.logs()}"
            )
        return done.stdout

    def start_engine(self) -> None:
        if not SOCKET.exists():
            self.started_engine = True
        subprocess.run([str(ENGINE), "start"], check=True, capture_output=True, timeout=120)

    def stop_engine(self) -> None:
        if self.started_engine:
            subprocess.run([str(ENGINE), "stop"], check=True, capture_output=True, timeout=120)

    # --- up / down ---------------------------------------------------------------------------

    def up(self, timeout_s: float = 900) -> float:
        """Start the stack and wait for every healthcheck; return the seconds that took."""
        if os.geteuid() != 0:
            raise StackError("the container stack runs Podman as root")
        self.start_engine()
        left = self.leftovers()
        if any(left.values()):
            raise StackError(
                f"the compose project {PROJECT!r} exists already ({left}): stop it with "
                "`docker compose down -v` before starting another"
            )
        self.state.mkdir(parents=True, exist_ok=True)
        values = settings(_free_port(), _free_port())
        write_private(self.env_file, "".join(f"{k}={v}\n" for k, v in values.items()))
        started = time.monotonic()
        self.compose(
            "up", "--detach", "--no-build", "--wait", f"--wait-timeout={int(timeout_s)}",
            f"--scale=ray-worker={WORKERS}",
            timeout=timeout_s + 60,
        )  # fmt: skip
        return time.monotonic() - started

    def down(self) -> None:
        """`docker compose down -v`: every container, network and volume of the project."""
        try:
            if self.env_file.exists():
                self.compose("down", "--volumes", "--timeout=60", timeout=600)
        finally:
            self.stop_engine()

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, networks and volumes that exist (all, running or not)."""
        found = {}
        for kind, listing in (
            ("containers", ["ps", "--all"]),
            ("networks", ["network", "ls"]),
            ("volumes", ["volume", "ls"]),
        ):
            out = podman(*listing, "--filter", f"label={LABEL}", "--format", "{{.Name}}")
            found[kind] = sorted(out.split())
        if not found["networks"]:  # a network made before it carried the label
            names = podman("network", "ls", "--format", "{{.Name}}").split()
            found["networks"] = [n for n in names if n == self._network_name()]
        return found

    def _network_name(self) -> str:
        try:
            return self.setting("GRADREG_NETWORK")
        except (KeyError, FileNotFoundError):
            return PROJECT

    # --- containers ----------------------------------------------------------------------

    def containers(self, service: str | None = None) -> list[Container]:
        out = podman("ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.ID}}")
        ids = out.split()
        if not ids:
            return []
        found = []
        for info in json.loads(podman("inspect", "--type", "container", *ids)):
            labels = info["Config"]["Labels"] or {}
            name = labels.get("com.docker.compose.service", "")
            if service is not None and name != service:
                continue
            state = info["State"]
            health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")
            networks = info["NetworkSettings"].get("Networks") or {}
            address = next((n.get("IPAddress", "") for n in networks.values()), "")
            found.append(
                Container(
                    name=info["Name"].lstrip("/"),
                    service=name,
                    state=state["Status"],
                    health=health,
                    exit_code=state.get("ExitCode", 0),
                    address=address,
                    restarts=info.get("RestartCount", 0),
                )
            )
        return sorted(found, key=lambda c: c.name)

    def kill(self, container: str) -> None:
        """`podman kill`: SIGKILL to the container's processes, as a crashed node."""
        podman("kill", container)

    def start(self, container: str) -> None:
        podman("start", container)

    def logs(self, tail: int = 30) -> str:
        parts = []
        for container in self.containers():
            out = subprocess.run(
                ["podman", "logs", "--tail", str(tail), container.name],
                capture_output=True,
                text=True,
                timeout=60,
            )
            parts.append(
                f"--- {container.name} ({container.state}, {container.health or 'no check'}):\n"
                f"{out.stdout}{out.stderr}"
            )
        return "\n".join(parts)
