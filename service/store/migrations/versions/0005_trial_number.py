"""Trials keep their number in the sweep (``<sweep>-t7-<id>``), indexed: /trials lists by it.

Trials stored before get it from their names; a name without one (a sweep that started before
trials were numbered) leaves it null, and such trials are listed after the numbered ones.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sweeps.records import trial_number

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 1000  # rows per UPDATE executemany


def upgrade() -> None:
    op.add_column("trials", sa.Column("number", sa.Integer(), nullable=True))
    op.create_index("ix_trials_sweep_number", "trials", ["sweep_id", "number", "trial_id"])
    _backfill_numbers()


def _backfill_numbers() -> None:
    connection = op.get_bind()
    trials = sa.table(
        "trials",
        sa.column("sweep_id"),
        sa.column("trial_id"),
        sa.column("name"),
        sa.column("number", sa.Integer),
    )
    update = (
        sa.update(trials)
        .where(
            trials.c.sweep_id == sa.bindparam("b_sweep_id"),
            trials.c.trial_id == sa.bindparam("b_trial_id"),
        )
        .values(number=sa.bindparam("b_number"))
    )
    rows = connection.execute(sa.select(trials.c.sweep_id, trials.c.trial_id, trials.c.name))
    numbered = [
        {"b_sweep_id": sweep_id, "b_trial_id": trial_id, "b_number": number}
        for sweep_id, trial_id, name in rows.all()
        if (number := trial_number(name or "")) is not None
    ]
    for start in range(0, len(numbered), BATCH):
        connection.execute(update, numbered[start : start + BATCH])


def downgrade() -> None:
    op.drop_index("ix_trials_sweep_number", table_name="trials")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("number")
