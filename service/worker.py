"""The sweep driver as a Ray Job: `python -m service.worker --sweep-id ID`.

It reads the spec from the service's database, runs (or resumes) the sweep on the cluster the
job belongs to, and writes trial progress and the outcome back through the store.
"""

from __future__ import annotations

import argparse
import sys

from service.settings import DriverJobSettings
from service.store.database import make_engine
from service.store.sweep_store import DatabaseSweepStore
from sweeps import DriverOptions, run_stored
from sweeps.tracking import OWNER_TAG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.worker", description=__doc__)
    parser.add_argument("--sweep-id", required=True)
    args = parser.parse_args(argv)
    settings = DriverJobSettings()
    if not settings.store_configured:
        # The local default would be a fresh SQLite file in the job's working directory: a
        # store that holds no sweep. Say what is missing instead.
        print(
            "error: the sweep driver has no store: set GRADREG_DATABASE_URL on the Ray head "
            "(or GRADREG_DATABASE_URL_FILE)",
            file=sys.stderr,
        )
        return 2
    store = DatabaseSweepStore(make_engine(settings.resolved_database_url()))
    options = DriverOptions(
        # Inside a Ray Job, RAY_ADDRESS names the job's cluster; never start a second one.
        ray_address=settings.job_ray_address or "auto",
        tracking_uri=settings.resolved_tracking_uri(),
        storage_path=settings.resolved_storage_path(),
        run_tags=((OWNER_TAG, store.owner(args.sweep_id)),),
        # The service shares its cluster among sweeps (`service.fair_share`): an idle cached
        # trial process would hold its GPU from them (`DriverOptions.reuse_actors`).
        reuse_actors=False,
    )
    outcome = run_stored(args.sweep_id, store, options)
    print(f"sweep {args.sweep_id}: {outcome.status} ({outcome.reason})")
    return 0 if outcome.status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
