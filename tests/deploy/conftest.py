"""The deployment's files, read and rendered offline: no Docker engine is needed."""

from __future__ import annotations

import pytest

from tests.helpers.deploy import COMBINATIONS, render


@pytest.fixture(scope="session")
def stack() -> dict:
    return render(COMBINATIONS["single-host"])


@pytest.fixture(scope="session")
def services(stack: dict) -> dict:
    return stack["services"]
