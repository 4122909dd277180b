"""The best trial's model in the MLflow Model Registry (name, version, uri), once registered;
where each trial runs (its Ray node and GPUs, the device it trains on).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("registered_model", sa.JSON(), nullable=True))
    op.add_column("trials", sa.Column("placement", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("placement")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("registered_model")
