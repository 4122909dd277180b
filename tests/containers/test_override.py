"""docker/podman.yml changes what it says it changes and nothing else (no engine needed).

The container stack runs docker-compose.yml with this override on top; a difference it does
not name here would make the tested stack drift from the one users run.
"""

from __future__ import annotations

from typing import Any

from tests.helpers.deploy import render

BASE = ["docker-compose.yml"]
WITH_OVERRIDE = ["docker-compose.yml", "docker/podman.yml"]

# Each difference, and why (docker/podman.yml says the same).
EXPECTED = {
    # The MinIO stand-in has no admin API: the bucket only.
    "services.minio-init.command",
    # This host's open-files and processes limits (Podman drops its default_ulimits for a
    # container that names limits of its own).
    "services.ray-head.ulimits.nofile",
    "services.ray-head.ulimits.nproc",
    "services.ray-worker.ulimits.nofile",
    "services.ray-worker.ulimits.nproc",
    # No GPU: one logical GPU declared, no reservation.
    "services.ray-worker.command",
    "services.ray-worker.deploy.resources.reservations",
}


def differences(old: Any, new: Any, path: str = "") -> set[str]:
    """The dotted paths where two rendered models differ (a key present in one only, too)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: set[str] = set()
        for key in old.keys() | new.keys():
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                found.add(where)
            else:
                found |= differences(old[key], new[key], where)
        return found
    return set() if old == new else {path}


def test_the_override_changes_only_what_it_names():
    assert differences(render(BASE), render(WITH_OVERRIDE)) == EXPECTED


def test_the_differences_are_the_ones_named():
    base, podman = render(BASE)["services"], render(WITH_OVERRIDE)["services"]

    assert podman["ray-worker"]["command"] == ["--num-gpus=1"]
    assert "reservations" in base["ray-worker"]["deploy"]["resources"]
    assert not podman["ray-worker"]["deploy"].get("resources")
    assert podman["ray-worker"]["deploy"]["replicas"] == base["ray-worker"]["deploy"]["replicas"]
    for name in ("ray-head", "ray-worker"):
        assert podman[name]["ulimits"] == {"nofile": 20000, "nproc": 32768}, name
    # minio-init runs its own first commands, in their order, and only drops the admin ones.
    (script,) = base["minio-init"]["command"]
    (kept,) = podman["minio-init"]["command"]
    lines = [line for line in script.splitlines() if line.strip()]
    assert kept.splitlines() == lines[:2]
    assert all(line.lstrip().startswith(("mc admin", "cat", "{", '"Resource"', "POLICY", "#",
                                         "||"))
               for line in lines[2:]), lines[2:]  # fmt: skip


def test_a_change_the_override_does_not_name_is_caught():
    podman = render(WITH_OVERRIDE)
    podman["services"]["api"]["environment"]["GRADREG_MAX_ACTIVE_SWEEPS"] = "1"

    assert differences(render(BASE), podman) - EXPECTED == {
        "services.api.environment.GRADREG_MAX_ACTIVE_SWEEPS"
    }
