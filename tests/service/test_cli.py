"""python -m service: --version, serve's flags over the environment, and the exit codes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import client as service_client
from service import problems
from service.__main__ import build_parser, main, settings_from_args
from service.launcher import free_port
from service.settings import ServiceSettings
from service.statuses import PARETO_OF_FINISHED
from service.store import status_machine, sweep_queries
from service.store.sweep_store import objectives_of, upsert_trials
from sweeps import TrialEvent
from tests.helpers import poll_until
from tests.helpers.api import LiveApi
from tests.helpers.store import new_sweep

TOKEN = "cli-token-" + "c" * 24


def serve_settings(*argv: str) -> ServiceSettings:
    return settings_from_args(build_parser().parse_args(list(argv)))


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No GRADREG_* from the caller's environment; var_dir under tmp_path (returned)."""
    for name in [n for n in os.environ if n.startswith("GRADREG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GRADREG_VAR_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


@pytest.fixture
def fake_uvicorn(monkeypatch, clean_env) -> Iterator[list[dict]]:
    """serve() up to uvicorn.run, which records its arguments; port 1 fails as a taken one."""
    import uvicorn

    calls: list[dict] = []

    def run(app, **kwargs) -> None:
        calls.append(kwargs)
        if kwargs["port"] == 1:
            raise SystemExit(3)  # what uvicorn does when it cannot bind or start

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("GRADREG_API_TOKENS", TOKEN)
    # prepare_ray_auth sets these in os.environ; monkeypatch puts them back afterwards.
    monkeypatch.setenv("RAY_AUTH_MODE", "")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "")
    root = logging.getLogger()
    level = root.level
    yield calls
    root.setLevel(level)


def test_version_prints_the_installed_version():
    done = subprocess.run(
        [sys.executable, "-m", "service", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"python -m service {version('gradreg')}\n"


def test_serve_flags_override_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("GRADREG_HOST", "127.0.0.2")
    monkeypatch.setenv("GRADREG_PORT", "9001")
    for argv in ([], ["serve"]):  # `python -m service` alone is serve
        settings = serve_settings(*argv)
        assert (settings.host, settings.port) == ("127.0.0.2", 9001)
    settings = serve_settings("serve", "--host", "::1", "--port", "9002")
    assert (settings.host, settings.port) == ("::1", 9002)
    assert settings.var_dir == clean_env  # what no flag names still comes from the environment
    assert build_parser().parse_args(["serve", "--log-level", "DEBUG"]).log_level == "debug"


@pytest.mark.parametrize(
    ("argv", "flag", "reason"),
    [
        (["--port", "0"], "--port", "0 is outside 1-65535"),
        (["--port", "65536"], "--port", "65536 is outside 1-65535"),
        (["--port", "http"], "--port", "not a port number: 'http'"),
        (["--log-level", "verbose"], "--log-level", "invalid choice: 'verbose'"),
    ],
)
def test_invalid_serve_flags_exit_2_naming_the_flag(capsys, argv, flag, reason):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {reason}" in capsys.readouterr().err


def test_a_host_flag_goes_through_the_same_listen_check_as_the_environment(clean_env, capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without API tokens" in capsys.readouterr().err
    assert not clean_env.exists()  # refused before any token file was written


def test_a_loopback_host_flag_over_a_public_environment_is_allowed(clean_env, monkeypatch):
    monkeypatch.setenv("GRADREG_HOST", "0.0.0.0")
    serve_settings("serve", "--host", "127.0.0.1").check_listen_address()


def test_an_invalid_environment_exits_2_naming_the_variable(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("GRADREG_PORT", "eighty")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid settings:") and "GRADREG_PORT" in err
    assert "Traceback" not in err


def test_serve_passes_the_log_level_to_uvicorn_and_the_root_logger(fake_uvicorn):
    assert main(["serve", "--port", "8123", "--log-level", "warning"]) == 0
    assert fake_uvicorn == [{"host": "127.0.0.1", "port": 8123, "log_level": "warning"}]
    assert logging.getLogger().level == logging.WARNING


def test_a_server_that_cannot_start_exits_1(fake_uvicorn):
    assert main(["serve", "--port", "1"]) == 1


def test_serve_listens_on_the_flags_port_and_ctrl_c_stops_it_cleanly(tmp_path):
    port, env_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRADREG_")},
        "GRADREG_PORT": str(env_port),  # the flag wins over it
        "GRADREG_VAR_DIR": str(tmp_path / "var"),
        "GRADREG_API_TOKENS": TOKEN,
        # Nothing listens there: the API starts without a Ray head of its own (not ready).
        "GRADREG_RAY_JOBS_URL": f"http://127.0.0.1:{free_port()}",
        "GRADREG_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
    }
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with open(tmp_path / "api.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", *argv],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_live(server, f"http://127.0.0.1:{port}/healthz", tmp_path / "api.log")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=5)
        server.send_signal(signal.SIGINT)
        # uvicorn shuts down gracefully on Ctrl-C and returns: exit 0, like a stopped sweep.
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # uvicorn's start-up lines are INFO: --log-level warning reached it.
    assert "Uvicorn running on" not in (tmp_path / "api.log").read_text()


def _wait_until_live(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    def live() -> bool:
        assert server.poll() is None, log.read_text()[-4000:]
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    poll_until(
        live, timeout_s, f"the API at {url}", interval_s=0.3, detail=lambda: log.read_text()[-4000:]
    )


# ---------------------------------------------------------------- the client commands
# Against the real routes (`live_api`: the app served in this process, without Ray), so what
# the client reads is what the API answers.


def client_args(live_api: LiveApi) -> list[str]:
    return ["--url", live_api.url, "--token", live_api.token]


def stored_sweep(live_api: LiveApi, status: str, **document: Any) -> str:
    """A sweep in ``status`` in the live API's store."""
    return new_sweep(live_api.sessions, status, **document)


@pytest.mark.parametrize(("status", "code"), [("failed", 1), ("succeeded", 0), ("cancelled", 0)])
def test_status_of_a_sweep_exits_by_how_it_ended(live_api, capsys, status, code):
    sweep_id = stored_sweep(live_api, status)
    assert main(["status", sweep_id, *client_args(live_api)]) == code
    out = capsys.readouterr().out
    assert out.startswith(f"sweep {sweep_id} (demo): {status}\n")
    assert f"0 trial(s) listed at /v1/sweeps/{sweep_id}/trials" in out


def test_status_names_the_best_by_the_sweeps_objectives_and_basis(live_api, capsys):
    two = [{"metric": "val_nll"}, {"metric": "val_accuracy", "goal": "maximize"}]
    sweep_id = stored_sweep(live_api, "running", objectives=two)
    args = ["status", sweep_id, *client_args(live_api)]
    assert main(args) == 0
    out = capsys.readouterr().out
    heading = (
        f"  best ({PARETO_OF_FINISHED}; objectives val_nll (minimize), "
        "val_accuracy (maximize)): none yet"
    )
    assert heading in out
    with live_api.sessions() as session:
        upsert_trials(
            session,
            sweep_id,
            [
                TrialEvent(
                    "demo", "t1", "demo-t1-t1", "succeeded", {"lr": 0.1},
                    {"epoch": 3.0, "val_nll": 0.25, "val_accuracy": 0.875, "test_nll": 0.3},
                    3, None,
                )
            ],
            objectives_of({"objectives": two}),
        )  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert heading.removesuffix(" none yet") in out
    assert "    demo-t1-t1 (succeeded): val_nll 0.25, val_accuracy 0.875\n" in out
    assert "      params {'lr': 0.1}; also test_nll 0.3\n" in out


def test_submit_wait_follows_the_sweep_to_its_end(live_api, capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: waited\ndataset: {name: iris}\nmethod: map\nfixed: {epochs: 1}\n")
    code: list[int] = []
    waiting = threading.Thread(
        target=lambda: code.append(main(["submit", str(path), "--wait", *client_args(live_api)]))
    )
    waiting.start()

    def submitted() -> str | None:
        with live_api.sessions() as session:
            found, _ = sweep_queries.list_sweeps(session, limit=500)
            return next((sweep.id for sweep in found if sweep.name == "waited"), None)

    sweep_id = poll_until(submitted, 60, "the submitted sweep in the store")
    with live_api.sessions() as session:
        status_machine.request_cancel(session, sweep_id)  # nothing runs it: no Ray here
    waiting.join(timeout=60)
    assert code == [0]
    out, err = capsys.readouterr()
    assert out.startswith(f"submitted {sweep_id} (waited)\n")
    assert f"sweep {sweep_id} (waited): cancelled" in out
    # the progress lines, the last one final
    assert err.splitlines()[-1] == "[waited] cancelled: trials 0 done, 0 running, 0 failed"


def test_an_unreachable_api_exits_1_without_a_traceback(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["status", "sw-1", "--url", url, "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the API at {url}")


def test_a_client_command_without_a_token_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GRADREG_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no var/api_token here
    assert main(["status", "sw-1", "--url", "http://127.0.0.1:9"]) == 2
    assert "give --token or set GRADREG_API_TOKEN" in capsys.readouterr().err


def test_ctrl_c_exits_130(live_api, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(service_client.Client, "sweep", interrupted)
    assert main(["status", "sw-1", *client_args(live_api)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_wrong_request_exits_2_with_the_apis_words(live_api, capsys, tmp_path):
    missing = "0" * 32
    assert main(["status", missing, *client_args(live_api)]) == 2
    assert capsys.readouterr().err == f"error: 404: no sweep '{missing}'\n"
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndataset: {name: iris}\nmethod: no-such-method\n")
    assert main(["submit", str(path), *client_args(live_api)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 422: the sweep spec has 1 problem(s)\n  method: ")
    assert main(["status", "x", "--url", live_api.url, "--token", "wrong"]) == 2
    assert capsys.readouterr().err == "error: 401: that token is not accepted here\n"


@pytest.mark.parametrize("error", [500, 503])
def test_a_failed_service_exits_1(monkeypatch, capsys, error):
    """The API's own problem answer for a failure it cannot be made to have here (a bug, a
    store that is down: tests/reliability makes those for real)."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = problems.problem(error, "the answer's own words").body
        return httpx.Response(error, content=body, headers={"content-type": problems.MEDIA_TYPE})

    real_client = httpx.Client
    monkeypatch.setattr(
        service_client.httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.MockTransport(answer), **kwargs),
    )
    assert main(["status", "sw-1", "--url", "http://127.0.0.1:9", "--token", "t"]) == 1
    assert f"error: {error}: the answer's own words" in capsys.readouterr().err
