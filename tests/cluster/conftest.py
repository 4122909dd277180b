"""The local cluster (localcluster/), started once for this package's tests and stopped after
them, so that its idle Ray nodes do not slow the rest of the suite.

Every process is real: PostgreSQL, moto's S3 server, MLflow's server, a Ray head and two GPU
workers in network namespaces of their own, and the API. It needs root, as CI has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from localcluster.harness import API_URL, Cluster


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster gives its nodes network namespaces, which needs root")
    harness = Cluster(state=tmp_path_factory.mktemp("cluster"))
    harness.up()
    try:
        yield harness
    finally:
        harness.down()
    # make cluster-down's promise: nothing it started is left running.
    assert harness.leftovers() == []


@pytest.fixture
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {cluster.api_token}"}
    with httpx.Client(base_url=API_URL, headers=headers, timeout=30) as client:
        yield client
