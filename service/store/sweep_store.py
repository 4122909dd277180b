"""The driver's side of the store: `sweeps.store.SweepStore` on the service's database.

Each method is its own short transaction, since the driver calls them from Tune's loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from service.store import repository
from service.store.database import session_factory
from sweeps.checks import Limits, parse_spec

if TYPE_CHECKING:
    from sweeps.driver import SweepOutcome, SweepRecord
    from sweeps.progress import TrialEvent
    from sweeps.spec import SweepSpec


class DatabaseSweepStore:
    def __init__(self, engine: sa.Engine, limits: Limits | None = None) -> None:
        self.sessions = session_factory(engine)
        self.limits = limits

    def load_spec(self, sweep_id: str) -> SweepSpec:
        with self.sessions() as session:
            document = repository.get_sweep(session, sweep_id).spec
        return parse_spec(document, self.limits)

    def record_start(self, sweep_id: str, record: SweepRecord) -> None:
        with self.sessions() as session:
            repository.mark_running(
                session,
                sweep_id,
                mlflow_experiment_id=record.experiment_id,
                mlflow_parent_run_id=record.parent_run_id,
                tracking_uri=record.tracking_uri,
            )

    def record_trial(self, sweep_id: str, event: TrialEvent) -> None:
        with self.sessions() as session:
            repository.upsert_trial(session, sweep_id, event)

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        with self.sessions() as session:
            repository.record_outcome(session, sweep_id, outcome)

    def stop_requested(self, sweep_id: str) -> bool:
        with self.sessions() as session:
            return repository.get_sweep(session, sweep_id).cancel_requested
