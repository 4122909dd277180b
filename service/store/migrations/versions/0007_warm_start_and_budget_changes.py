"""Sweeps keep what their warm start seeded and skipped (``warm_start``; null for every sweep
stored before, none of which named earlier sweeps) and each change of their budget
(``budget_changes``; empty for every sweep stored before, none of which could change it).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("warm_start", sa.JSON(), nullable=True))
    op.add_column(
        "sweeps",
        sa.Column("budget_changes", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("budget_changes")
        batch.drop_column("warm_start")
