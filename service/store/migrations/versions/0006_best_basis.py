"""Sweeps keep what their best is (``best_basis``): the Pareto set of the finished trials for
several objectives, the best so far by latest report or the best finished trial for one.

A sweep that succeeded holds its outcome's best, and an unfinished one without a best holds
none under either rule, so their bases are known. Any other sweep's is left null: one still
running gets its basis with its next trial write (a multi-objective one its Pareto set too,
rebuilt from its finished trials: it held the best trial by the first objective before), and
of one that failed or was cancelled the store cannot tell whether its best came from its
driver's outcome or was its best so far when the driver stopped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The bases as this revision writes them (service.statuses, which may grow later).
PARETO_OF_FINISHED = "pareto set of finished trials"
BEST_BY_LATEST_REPORT = "best so far by latest report"
BEST_FINISHED = "best finished trial"
UNFINISHED = ("pending", "submitted", "running", "cancelling")


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("best_basis", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    sweeps = sa.table(
        "sweeps",
        sa.column("id"),
        sa.column("status"),
        sa.column("spec", sa.JSON),
        sa.column("best", sa.JSON),
        sa.column("best_basis"),
    )
    known = sa.or_(
        sweeps.c.status == "succeeded",
        sa.and_(sweeps.c.status.in_(UNFINISHED), sweeps.c.best.is_(None)),
    )
    rows = connection.execute(sa.select(sweeps.c.id, sweeps.c.status, sweeps.c.spec).where(known))
    for sweep_id, status, spec in rows.all():
        several = len((spec or {}).get("objectives") or []) > 1
        if several:
            basis = PARETO_OF_FINISHED
        else:
            basis = BEST_FINISHED if status == "succeeded" else BEST_BY_LATEST_REPORT
        connection.execute(
            sa.update(sweeps).where(sweeps.c.id == sweep_id).values(best_basis=basis)
        )


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("best_basis")
