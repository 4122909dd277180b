"""A sweep's admitted limits (the caps and data root its driver enforces) and its ensemble.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("limits", sa.JSON(), nullable=True))
    op.add_column("sweeps", sa.Column("ensemble", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("ensemble")
        batch.drop_column("limits")
