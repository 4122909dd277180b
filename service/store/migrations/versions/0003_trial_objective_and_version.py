"""Trials keep their first-objective loss and the sweep version that wrote them, indexed.

The best so far becomes one indexed query instead of a scan of the sweep's trials, the events
stream asks only for the trials written since the version it saw, and pages of trials filtered
by state come from an index. Trials of sweeps still running get their loss computed here, so
that their best so far stays right across the upgrade.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.sweep_store import objectives_of
from sweeps.records import Report, loss

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNFINISHED = ("pending", "submitted", "running", "cancelling")


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("objective", sa.Float(), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), server_default="0", nullable=False))
    op.drop_index("ix_trials_sweep_state", table_name="trials")
    op.create_index("ix_trials_sweep_state_trial", "trials", ["sweep_id", "state", "trial_id"])
    op.create_index("ix_trials_sweep_objective", "trials", ["sweep_id", "objective", "trial_id"])
    op.create_index("ix_trials_sweep_version", "trials", ["sweep_id", "version"])
    _backfill_unfinished()


def _backfill_unfinished() -> None:
    connection = op.get_bind()
    sweeps = sa.table("sweeps", sa.column("id"), sa.column("spec", sa.JSON), sa.column("status"))
    trials = sa.table(
        "trials",
        sa.column("sweep_id"),
        sa.column("trial_id"),
        sa.column("state"),
        sa.column("metrics", sa.JSON),
        sa.column("objective", sa.Float),
    )
    running = connection.execute(
        sa.select(sweeps.c.id, sweeps.c.spec).where(sweeps.c.status.in_(UNFINISHED))
    )
    for sweep_id, spec in running.all():
        objective = objectives_of(spec or {})[0]
        rows = connection.execute(
            sa.select(trials.c.trial_id, trials.c.state, trials.c.metrics).where(
                trials.c.sweep_id == sweep_id
            )
        )
        for trial_id, state, metrics in rows.all():
            value = loss(objective, Report(state, metrics or {}), finished_only=False)
            if value is not None:
                connection.execute(
                    sa.update(trials)
                    .where(trials.c.sweep_id == sweep_id, trials.c.trial_id == trial_id)
                    .values(objective=value)
                )


def downgrade() -> None:
    op.drop_index("ix_trials_sweep_version", table_name="trials")
    op.drop_index("ix_trials_sweep_objective", table_name="trials")
    op.drop_index("ix_trials_sweep_state_trial", table_name="trials")
    op.create_index("ix_trials_sweep_state", "trials", ["sweep_id", "state"])
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("version")
        batch.drop_column("objective")
