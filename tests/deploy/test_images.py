"""The Dockerfiles: hadolint-clean, and the versions they install are the ones tested here."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.deploy import ROOT

HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docker").glob("*") if "Dockerfile" in p.name
)


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_both_images_are_checked() -> None:
    assert DOCKERFILES == ["docker/Dockerfile", "docker/mlflow.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = _hadolint(ROOT / dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_floating_base_image(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN pip install ray\n")
    result = _hadolint(dockerfile)
    assert result.returncode != 0 and "DL3007" in result.stdout


def _pins(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)
    return {name.lower(): version for name, version in pins}


def test_image_pins_are_the_tested_versions() -> None:
    pins = _pins(ROOT / "docker" / "constraints.txt")
    assert {"ray", "mlflow", "optuna", "pyarrow"} <= set(pins)
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # boto3: the MLflow server's alone
        assert installed == version, (
            f"docker/constraints.txt pins {name}=={version} but the tests run {installed}"
        )


def test_the_image_takes_torch_from_the_project_constraints() -> None:
    pins = _pins(ROOT / "constraints.txt")
    assert list(pins) == ["torch"]
    assert importlib.metadata.version("torch").split("+")[0] == pins["torch"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY constraints.txt pins/torch.txt" in dockerfile
    assert "--constraint pins/torch.txt --constraint pins/image.txt" in dockerfile


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_run_as_an_unprivileged_user_on_a_pinned_base(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    (base,) = set(re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M))
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", base)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] == "1000:1000"
