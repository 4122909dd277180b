#!/usr/bin/env python3
"""Run every container's healthcheck on its interval, as Docker's daemon does.

Podman 4.3 schedules healthchecks with systemd timers; without systemd (these machines, CI)
nothing runs them and a container stays "starting" for ever, so `docker compose up --wait` and
`depends_on: condition: service_healthy` never finish. This loop runs `podman healthcheck run`
for each running container that has a healthcheck: first `interval` after the container
started, then `interval` after each run ended, as Docker does. Podman itself applies the
check's timeout, retries and start period and records the status that compose reads.

docker/podman/engine.sh starts it beside `podman system service` and stops it by its id.
Standard library only: it runs under any python3.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

TICK_S = 1.0
DOCKER_DEFAULT_INTERVAL_S = 30.0


@dataclass
class Check:
    interval_s: float
    timeout_s: float
    next_due: float  # time.monotonic()
    running: bool = False


def _seconds(nanoseconds: object, default: float) -> float:
    return (
        int(nanoseconds) / 1e9 if isinstance(nanoseconds, (int, float)) and nanoseconds else default
    )


def _running_containers() -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "--filter", "status=running", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.split() if done.returncode == 0 else []


def _healthcheck(container: str) -> dict | None:
    """The container's healthcheck config, or None when it has none."""
    done = subprocess.run(
        ["podman", "inspect", "--type", "container", container],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return None
    (info,) = json.loads(done.stdout)
    config = info.get("Config", {}).get("Healthcheck") or {}
    test = config.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    return config


def _run(container: str, check: Check, log) -> None:
    try:
        done = subprocess.run(
            ["podman", "healthcheck", "run", container],
            capture_output=True,
            text=True,
            timeout=check.timeout_s + 30,
        )
        if done.returncode != 0:
            log(f"{container[:12]}: {(done.stdout + done.stderr).strip() or done.returncode}")
    except subprocess.TimeoutExpired:
        log(f"{container[:12]}: podman healthcheck run did not return")
    finally:
        check.next_due = time.monotonic() + check.interval_s
        check.running = False


def main() -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    checks: dict[str, Check | None] = {}  # None: a container without a healthcheck
    while not stop.is_set():
        running = _running_containers()
        for gone in set(checks) - set(running):
            del checks[gone]
        now = time.monotonic()
        for container in running:
            if container not in checks:
                config = _healthcheck(container)
                if config is None:
                    checks[container] = None
                    continue
                interval = _seconds(config.get("Interval"), DOCKER_DEFAULT_INTERVAL_S)
                timeout = _seconds(config.get("Timeout"), DOCKER_DEFAULT_INTERVAL_S)
                # Seen for the first time within a tick of its start: due one interval on.
                checks[container] = Check(interval, timeout, now + interval)
            check = checks[container]
            if check is not None and not check.running and now >= check.next_due:
                check.running = True
                threading.Thread(target=_run, args=(container, check, log), daemon=True).start()
        stop.wait(TICK_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
