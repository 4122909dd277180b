"""The compose topology as processes on this machine: `Cluster(state).up()` and `.down()`.

Nodes, in start order (each waits for its compose healthcheck before the next starts):

    postgres     this machine's server, with docker/postgres-init.sh's roles and databases,
                 forwarded from the bridge (10.77.0.1:5432)
    minio        moto's S3 server (10.77.0.2:9000); the bucket made as minio-init makes it
    mlflow       compose's `mlflow server` command: PostgreSQL backend, artifacts in the bucket
    ray-head     docker/entrypoint/ray-head.sh --num-gpus=0 (the sweep drivers' node)
    ray-worker   docker/entrypoint/ray-worker.sh, twice, one after the other, --num-gpus=1
    api          docker/entrypoint/api.sh, against the head's Jobs API

Everything the harness started is found again from its state directory and its namespaces:
`down` stops those processes only, by their ids, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from gradreg.files import write_private
from localcluster import network
from localcluster.compose import ROOT, Image, Paths, Service, check_roles, render, service
from localcluster.network import HOST_ADDRESS, PREFIX, Node

DEFAULT_STATE = ROOT / "var" / "cluster"
RAY_TMP = Path("/tmp/gradreg-cluster")  # Ray's Unix sockets need short paths
MARKER = "gradreg local cluster"  # the comment on the databases the harness created
LOCAL_POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
MARKER_VARIABLE = "GRADREG_LOCAL_CLUSTER"  # in every process the harness starts: its state dir

NODES = {
    "minio": Node("gradreg-s3", f"{PREFIX}.2", ("minio",)),
    "mlflow": Node("gradreg-mlflow", f"{PREFIX}.3", ("mlflow",)),
    "ray-head": Node("gradreg-head", f"{PREFIX}.10", ("ray-head",)),
    "ray-worker-1": Node("gradreg-worker-1", f"{PREFIX}.11", ("ray-worker-1",)),
    "ray-worker-2": Node("gradreg-worker-2", f"{PREFIX}.12", ("ray-worker-2",)),
    "api": Node("gradreg-api", f"{PREFIX}.20", ("api",)),
}
WORKERS = ("ray-worker-1", "ray-worker-2")
S3_PORT = 9000
MLFLOW_URL = f"http://{NODES['mlflow'].address}:5000"
API_URL = f"http://{NODES['api'].address}:8000"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterError(RuntimeError):
    pass


def _driver_logs(ray_tmp: Path) -> list[Path]:
    """The sweep drivers' Ray job logs in every node's session directories, by node, then
    session, oldest first (Ray's `session_latest` link left out)."""
    return sorted(ray_tmp.glob("*/ray/session_2*/logs/job-driver-*.log"))


def keep_driver_logs(ray_tmp: Path, kept: Path) -> list[Path]:
    """Copy the sweep drivers' logs (Ray's job logs, in each node's session directories under
    ``ray_tmp``, which `down` removes) to ``kept``/<node>/<session>/; return the copies."""
    copies = []
    for log in _driver_logs(ray_tmp):
        node, session = log.parts[-5], log.parts[-3]
        (kept / node / session).mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy2(log, kept / node / session / log.name)))
    return copies


def _settings() -> dict[str, str]:
    """The .env a deployment fills in, with fresh secrets: docker/ci.env names every variable
    compose insists on (make deploy-check renders the compose files with it)."""
    lines = (ROOT / "docker" / "ci.env").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    values = {name: secrets.token_hex(16) for name in names}
    return {
        **values,
        "GRADREG_S3_ENDPOINT": f"http://minio:{S3_PORT}",
        # Where users on this machine open the UI; the nodes use http://mlflow:5000.
        "GRADREG_MLFLOW_UI_URL": MLFLOW_URL,
        "MLFLOW_PUBLIC_HOST": f"{NODES['mlflow'].address}:5000",
        # A hung MLflow server fails a call in about 10 s × 2 here (compose's default: 30 s × 3).
        "GRADREG_MLFLOW_TIMEOUT_S": "10",
        "GRADREG_MLFLOW_RETRIES": "1",
        # No hardware to build images for; the variant only names the image.
        "TORCH_VARIANT": "cpu",
        # The harness's API takes code bundles, as an operator turns them on in their .env.
        "GRADREG_ALLOW_USER_CODE": "true",
    }


def drivers_report(tail_lines: int = 40) -> str:
    """What the sweep drivers on the head are doing: each one's Python stacks (py-spy, which
    Ray's dashboard installs) and the end of the latest Ray job logs. For a test that waited
    for a sweep in vain."""
    parts = []
    for pid in network.pids(NODES["ray-head"]):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:  # it ended
            continue
        command = " ".join(argv)
        if Path(argv[0]).name.startswith("python") and "service.worker" in argv:  # not its sh
            spy = [str(_venv_bin("py-spy")), "dump", "--pid", str(pid)]
            dump = subprocess.run(spy, capture_output=True, text=True, timeout=120)
            parts.append(f"driver {pid} ({command.strip()}):\n{dump.stdout}{dump.stderr}")
    for log in _driver_logs(RAY_TMP)[-2:]:
        lines = log.read_text(errors="replace").splitlines()[-tail_lines:]
        parts.append(f"{log}, its last {len(lines)} lines:\n" + "\n".join(lines))
    return "\n\n".join(parts) or "no sweep driver runs on the head, and no driver log is there"


@dataclass
class Cluster:
    state: Path = DEFAULT_STATE

    @property
    def _file(self) -> Path:
        return self.state / "cluster.json"

    @property
    def api_token(self) -> str:
        return (self.state / "api_token").read_text().strip()

    @property
    def bucket(self) -> str:
        return self._model()["services"]["minio-init"]["environment"]["GRADREG_BUCKET"]

    @property
    def s3_endpoint(self) -> str:
        return f"http://{NODES['minio'].address}:{S3_PORT}"

    def is_up(self) -> bool:
        return self._file.exists()

    # --- up / down -------------------------------------------------------------------------

    def up(self, timeout_s: float = 240) -> None:
        network.require_root()
        if self.is_up():
            raise ClusterError(f"a local cluster is up ({self._file}); run make cluster-down")
        for leftover in NODES.values():
            if Path(f"/run/netns/{leftover.name}").exists():
                raise ClusterError(
                    f"network namespace {leftover.name} exists: a cluster this harness did not "
                    "record is running; stop it (make cluster-down) or delete the namespace"
                )
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        settings = _settings()
        self._write_private(".env", "".join(f"{k}={v}\n" for k, v in settings.items()))
        model = render(self.state / ".env")
        check_roles(model)
        self._write_private("compose.json", json.dumps(model))  # it holds the secrets
        self._write_private("api_token", settings["GRADREG_API_TOKENS"])
        # Compose copies the secret's variable into the container as this file.
        self._write_private("secrets/ray_auth_token", settings["RAY_AUTH_TOKEN"])
        self._save({"processes": {}})
        try:
            network.create(list(NODES.values()), host_aliases=("postgres",))
            self._start_postgres(model)
            for name in ("minio", "mlflow", "ray-head", *WORKERS, "api"):
                self.start(name, timeout_s)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process the harness started, remove its network and databases."""
        for name in reversed(NODES):
            self.stop(name)
        record = self._load()
        for pid in record.get("processes", {}).values():
            _kill_group(pid)
        for pid in self.leftovers():  # e.g. a Ray worker that left its namespace's pid list
            _send(pid, signal.SIGKILL)
        network.remove(list(NODES.values()))
        keep_driver_logs(RAY_TMP, self.state / "logs" / "ray")
        shutil.rmtree(RAY_TMP, ignore_errors=True)
        if record:
            _drop_databases()
        for private in (".env", "compose.json", "api_token", "secrets", "cluster.json"):
            target = self.state / private
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    # --- one node ----------------------------------------------------------------------------

    def start(self, name: str, timeout_s: float = 240) -> None:
        """Start a node's process as compose would, and wait for its healthcheck."""
        node = NODES[name]
        if name == "minio":
            self._launch(node, [str(_venv_bin("moto_server")), "-H", "0.0.0.0", "-p", str(S3_PORT)])
            self._wait(node, lambda: self._make_bucket(), timeout_s)
            return
        role = "ray-worker" if name in WORKERS else name
        spec = self._service(role, node)
        argv = list(spec.argv)
        if role == "ray-worker":
            # Compose reserves the host's GPUs for the worker; here each declares one logical GPU.
            argv.append("--num-gpus=1")
        self._launch(node, argv, spec.environment)
        check = [*node.prefix, *spec.healthcheck]
        healthy = lambda: subprocess.run(check, capture_output=True).returncode == 0  # noqa: E731
        self._wait(node, healthy, timeout_s)

    def stop(self, name: str, grace_s: float = 30) -> None:
        """SIGTERM to every process on the node, SIGKILL to what is left after the grace."""
        node = NODES[name]
        _signal_all(node, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while network.pids(node) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill(name)

    def kill(self, name: str) -> None:
        """SIGKILL every process on the node at once: the machine lost its power."""
        node = NODES[name]
        while pids := network.pids(node):
            for pid in pids:
                _send(pid, signal.SIGKILL)
            time.sleep(0.1)

    def leftovers(self) -> list[int]:
        """Processes this cluster started (they carry its marker in their environment) that
        are still running."""
        marker = f"{MARKER_VARIABLE}={self.state}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if marker in (proc / "environ").read_bytes().split(b"\0"):
                        found.append(int(proc.name))
                except OSError:  # gone, or a kernel thread
                    continue
        return found

    def pause(self, name: str) -> None:
        """SIGSTOP the node's processes: its ports still accept connections, nothing answers."""
        _signal_all(NODES[name], signal.SIGSTOP)

    def resume(self, name: str) -> None:
        _signal_all(NODES[name], signal.SIGCONT)

    # --- internals ---------------------------------------------------------------------------

    def _model(self) -> dict:
        return json.loads((self.state / "compose.json").read_text())

    def _service(self, role: str, node: Node) -> Service:
        model = self._model()
        dockerfile = model["services"][role].get("build", {}).get("dockerfile")
        image = Image.read(ROOT / dockerfile) if dockerfile else Image({}, {})
        own = self.state / "nodes" / node.name
        paths = Paths(
            venv=Path(sys.prefix),
            secrets=self.state / "secrets",
            data=self.state / "data",
            var=own / "var",
        )
        for directory in (paths.data, paths.var, own / "home", RAY_TMP / node.name):
            directory.mkdir(parents=True, exist_ok=True)
        base = {
            "PATH": BASE_PATH,
            "HOME": str(own / "home"),
            "LANG": "C.UTF-8",
            # Each container has a /tmp of its own: Ray's session directories must not meet.
            "TMPDIR": str(RAY_TMP / node.name),
            "RAY_TMPDIR": str(RAY_TMP / node.name),
            # Service names resolve from the node's /etc/hosts, as compose's DNS answers them;
            # gRPC's default resolver (c-ares) asks DNS only.
            "GRPC_DNS_RESOLVER": "native",
        }
        return service(model, role, image, paths, base)

    def _launch(self, node: Node, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.state / "logs" / f"{node.name}.log"
        env = env or {"PATH": f"{sys.prefix}/bin:{BASE_PATH}", "HOME": str(self.state)}
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*node.prefix, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**env, MARKER_VARIABLE: str(self.state)},
                start_new_session=True,
            )
        record = self._load()
        record["processes"][node.name] = process.pid
        self._save(record)

    def _wait(self, node: Node, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if not network.pids(node):
                break
            time.sleep(1)
        log = self.state / "logs" / f"{node.name}.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        state = "exited" if not network.pids(node) else f"not healthy in {timeout_s:.0f} s"
        raise ClusterError(f"{node.name} {state}; the end of {log}:\n{tail}")

    def _start_postgres(self, model: dict) -> None:
        """docker/postgres-init.sh against this machine's server, as its first start runs it."""
        _drop_databases()
        env = {
            **model["services"]["postgres"]["environment"],
            "PATH": BASE_PATH,
            "PGHOST": "127.0.0.1",
        }
        init = ROOT / "docker" / "postgres-init.sh"
        done = subprocess.run([str(init)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"{init} failed: {done.stderr.strip()}")
        with psycopg.connect(LOCAL_POSTGRES, autocommit=True) as connection:
            for database in ("gradreg", "mlflow"):
                connection.execute(f"COMMENT ON DATABASE {database} IS '{MARKER}'")
        forward = [sys.executable, "-m", "localcluster.forward", f"{HOST_ADDRESS}:5432"]
        with (self.state / "logs" / "forward.log").open("ab") as log:
            process = subprocess.Popen(
                [*forward, "127.0.0.1:5432"],
                cwd=ROOT,
                env={"PATH": BASE_PATH, MARKER_VARIABLE: str(self.state)},
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        record = self._load()
        record["processes"]["postgres-forward"] = process.pid
        self._save(record)

    def _make_bucket(self) -> bool:
        """minio-init's bucket. moto accepts any key, so the scoped one is not enforced here."""
        import boto3
        import botocore.exceptions

        client = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="harness",
            aws_secret_access_key="harness",
        )
        try:
            client.create_bucket(Bucket=self.bucket)
        except botocore.exceptions.EndpointConnectionError:
            return False
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return True

    def _write_private(self, name: str, text: str) -> None:
        write_private(self.state / name, text)

    def _load(self) -> dict:
        return json.loads(self._file.read_text()) if self._file.exists() else {}

    def _save(self, record: dict) -> None:
        self._file.write_text(json.dumps(record))


def _venv_bin(name: str) -> Path:
    return Path(sys.prefix) / "bin" / name


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _signal_all(node: Node, sig: signal.Signals) -> None:
    for pid in network.pids(node):
        _send(pid, sig)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _drop_databases() -> None:
    """The harness's own databases and roles; any other database of those names is refused."""
    with psycopg.connect(LOCAL_POSTGRES, autocommit=True) as connection:
        for name in ("gradreg", "mlflow"):
            row = connection.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (name,),
            ).fetchone()
            if row is not None and row[0] != MARKER:
                raise ClusterError(
                    f"this machine's PostgreSQL already has a database {name!r} that the local "
                    "cluster did not create; the harness will not drop it"
                )
            if row is not None:
                connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            if connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                connection.execute(f'DROP ROLE "{name}"')
