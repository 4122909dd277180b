"""The readiness probes: each says which component does not answer, in a short sentence."""

from __future__ import annotations

import sqlalchemy as sa

from service.launcher import RayJobs, free_port
from service.readiness import Readiness, ray_probe, store_probe


def test_the_store_probe_is_fine_on_a_live_store_and_names_a_dead_one(engine):
    assert store_probe(engine)() is None
    dead = sa.create_engine(
        f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
        connect_args={"connect_timeout": 2},
    )
    try:
        assert store_probe(dead)() == "store: OperationalError"
    finally:
        dead.dispose()


def test_the_ray_probe_names_the_jobs_api_that_does_not_answer():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    snapshot = Readiness({"ray": ray_probe(RayJobs(url, "python", {}))}).probe_now()
    assert not snapshot.ready
    assert snapshot.problems["ray"].startswith(f"Ray jobs API at {url}: ")
    assert "probe failed" not in snapshot.problems["ray"]  # the probe's own words, not a crash
