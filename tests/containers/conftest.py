"""docker-compose.yml on Podman (localcluster/containers.py), started once for this package's
stack tests and removed after them with `docker compose down -v`.

The images are built first by docker/build-local.sh: minutes on a new machine, seconds when
Podman's store has them. Root and Podman are needed (CI installs Podman, as .ci/run does);
elsewhere the stack tests are skipped, in CI they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from localcluster.containers import ContainerStack, build_images


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStack]:
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "the container stack runs Podman as root"
    elif missing:
        reason = f"{' and '.join(missing)} missing (apt-get install podman mmdebstrap …)"
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI runs the container stack, but {reason}")
    if reason:
        pytest.skip(reason)
    build_images()
    containers = ContainerStack(state=tmp_path_factory.mktemp("containers"))
    try:
        containers.up()
        yield containers
    finally:
        containers.down()
    # docker compose down -v leaves nothing of the project behind.
    assert containers.leftovers() == {"containers": [], "networks": [], "volumes": []}


@pytest.fixture
def api(stack: ContainerStack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client:
        yield client
