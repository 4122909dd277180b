"""Sweeps run as Ray Jobs: one job per sweep attempt, whose entrypoint is the sweep driver.

`LocalRayHead` starts the embedded head when no cluster is configured. Ray enables token
authentication by default (2.59+ for local clusters), so the service owns a token file: the
head, the job client and the job drivers all read it through RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH
(see `service.settings.prepare_ray_auth`, which must run before Ray is imported).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from service.code_store import CodeBundleMissing, CodeStore
from service.settings import absolute_paths
from sweeps.code import runtime_env as code_runtime_env

FINAL_JOB_STATES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalRayHead:
    """A Ray head on loopback for this service, stopped with it (`ray start --head --block`).

    Its address is kept in ``state_file``: an API process that was killed (not stopped) leaves
    the head and its sweep drivers running, and the next API process adopts them.
    """

    def __init__(
        self, state_file: Path, num_cpus: int | None = None, withheld: tuple[str, ...] = ()
    ) -> None:
        self.state_file = state_file
        self.num_cpus = num_cpus
        self.withheld = withheld  # environment variables the head and its jobs must not see
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.dashboard_url = ""
        self.temp_dir = ""

    def start(self, timeout_s: float = 60.0) -> str:
        adopted = self._adopt()
        if adopted:
            return adopted
        names = ("gcs", "dashboard", "client", "agent", "agent_grpc", "runtime_env", "metrics")
        ports = {name: free_port() for name in names}
        # Unix socket paths must stay short: the head's session lives under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="gradreg-ray-")
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--port={ports['gcs']}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
            f"--dashboard-agent-listen-port={ports['agent']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env']}",
            f"--metrics-export-port={ports['metrics']}",
            f"--temp-dir={self.temp_dir}",
        ]
        if self.num_cpus is not None:
            command.append(f"--num-cpus={self.num_cpus}")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=self.environment(),
        )
        self.pid = self.process.pid
        self.dashboard_url = f"http://127.0.0.1:{ports['dashboard']}"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the local Ray head exited with {self.process.returncode}")
            try:
                JobSubmissionClient(self.dashboard_url).list_jobs()
                self._remember()
                return self.dashboard_url
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"the local Ray head did not answer in {timeout_s} s"
                    ) from None
                time.sleep(0.5)

    def environment(self) -> dict[str, str]:
        """The head's environment, which its sweep drivers and trials inherit: this process's,
        less the withheld variables, with every place absolute (`absolute_paths`: a driver's
        and a trial's working directory is the code bundle's when the sweep has one)."""
        env = absolute_paths({k: v for k, v in os.environ.items() if k not in self.withheld})
        # No Ray Serve here to drain: without this a SIGTERM'd head waits 30 s before stopping.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        return env

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.pid is not None and process_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)  # `ray start --block` stops its processes
            deadline = time.monotonic() + timeout_s
            while process_alive(self.pid) and time.monotonic() < deadline:
                if self.process is not None:
                    self.process.poll()  # reap our own child
                time.sleep(0.2)
            if process_alive(self.pid):
                os.killpg(self.pid, signal.SIGKILL)
        self.process = None
        self.pid = None
        self.state_file.unlink(missing_ok=True)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _remember(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {"pid": self.pid, "dashboard_url": self.dashboard_url, "temp_dir": self.temp_dir}
        self.state_file.write_text(json.dumps(state))

    def _adopt(self) -> str | None:
        """The head an earlier API process left running, if it still answers."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not process_alive(int(state["pid"])):
            return None
        try:
            JobSubmissionClient(state["dashboard_url"]).list_jobs()
        except Exception:
            return None
        self.pid = int(state["pid"])
        self.dashboard_url = state["dashboard_url"]
        self.temp_dir = state["temp_dir"]
        return self.dashboard_url


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_NO_SUCH_JOB = re.compile(r"status code 404: Job \S+ does not exist")


@dataclass
class JobState:
    status: JobStatus
    message: str | None


class RayJobs:
    """Submit, watch and stop sweep drivers on a Ray cluster through its Jobs API.

    ``env``: the driver's variables (`service.app`'s `_driver_env`); ``code_store``: where the
    bundles that sweeps name (their spec's ``code.digest``) are kept.
    """

    def __init__(
        self,
        dashboard_url: str,
        python: str,
        env: dict[str, str],
        code_store: CodeStore | None = None,
    ) -> None:
        self.dashboard_url = dashboard_url
        self.python = python
        self.env = env
        self.code_store = code_store
        self._client: JobSubmissionClient | None = None

    @property
    def client(self) -> JobSubmissionClient:
        if self._client is None:
            self._client = JobSubmissionClient(self.dashboard_url)
        return self._client

    def cluster_resources(self) -> dict[str, float]:
        """The alive nodes' total resources, as Ray's state API reports them: {"GPU": n,
        "CPU": n, ...} (what `service.fair_share` shares)."""
        from ray.util.state import list_nodes

        totals: dict[str, float] = {}
        nodes = list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")])
        for node in nodes:
            for name, amount in (node.resources_total or {}).items():
                totals[name] = totals.get(name, 0.0) + float(amount)
        return totals

    @staticmethod
    def submission_id(sweep_id: str, attempt: int) -> str:
        return f"gradreg-{sweep_id}-{attempt}"

    def runtime_env(self, code: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The job's runtime environment: the driver's variables, and for a spec's ``code``
        section naming a bundle, the bundle (a local .zip, which Ray's job client uploads to
        the cluster) as the working directory of the driver and of every trial, on every node,
        with the section's pip requirements. Raises CodeBundleMissing."""
        digest = (code or {}).get("digest")
        if not digest:
            return {"env_vars": dict(self.env)}
        if self.code_store is None:
            raise CodeBundleMissing(digest)
        requirements = (code or {}).get("requirements") or ()
        return code_runtime_env(self.code_store.local_path(digest), requirements, self.env)

    def submit(self, sweep_id: str, attempt: int, code: Mapping[str, Any] | None = None) -> str:
        """Start attempt ``attempt`` of the sweep as a job; ``code`` is its spec's code section
        (every attempt of a sweep gets the same: the bundle is named in the stored spec)."""
        submission_id = self.submission_id(sweep_id, attempt)
        try:
            return self.client.submit_job(
                entrypoint=f"{self.python} -m service.worker --sweep-id {sweep_id}",
                submission_id=submission_id,
                runtime_env=self.runtime_env(code),
                metadata={"sweep_id": sweep_id, "attempt": str(attempt)},
            )
        except RuntimeError as error:
            if "already exists" not in str(error):
                raise
            return submission_id  # an earlier pass submitted it before the store heard of it

    def state(self, submission_id: str) -> JobState | None:
        try:
            info = self.client.get_job_info(submission_id)
        except RuntimeError as error:
            # Only Ray's own "no such job" answer: other failures (a dashboard that is restarting,
            # a 500 whose text happens to hold "404") must not end a sweep's attempt.
            if _NO_SUCH_JOB.search(str(error)):
                return None
            raise
        return JobState(info.status, info.message)

    def stop(self, submission_id: str) -> bool:
        return self.client.stop_job(submission_id)
