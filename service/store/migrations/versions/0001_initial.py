"""Sweeps, their tags and trials, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SWEEP_STATUSES = (
    "'pending', 'submitted', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'"
)
TRIAL_STATES = "'running', 'retrying', 'succeeded', 'stopped', 'failed', 'interrupted'"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _sweep_key() -> sa.Column:
    return sa.Column("sweep_id", sa.String(32), nullable=False)


def _sweep_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["sweep_id"], ["sweeps.id"], name=f"fk_{table}_sweep_id_sweeps", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(200), nullable=True),
        sa.Column("mlflow_experiment_id", sa.String(200), nullable=True),
        sa.Column("mlflow_parent_run_id", sa.String(200), nullable=True),
        sa.Column("tracking_uri", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("best", sa.JSON(), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _time("submitted_at", nullable=True),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(f"status IN ({SWEEP_STATUSES})", name="ck_sweeps_status"),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_index("ix_sweeps_created", "sweeps", ["created_at", "id"])
    op.create_index("ix_sweeps_status_created", "sweeps", ["status", "created_at", "id"])

    op.create_table(
        "sweep_tags",
        _sweep_key(),
        sa.Column("tag", sa.String(200), nullable=False),
        _sweep_fk("sweep_tags"),
        sa.PrimaryKeyConstraint("sweep_id", "tag", name="pk_sweep_tags"),
    )
    op.create_index("ix_sweep_tags_tag", "sweep_tags", ["tag"])

    op.create_table(
        "trials",
        _sweep_key(),
        sa.Column("trial_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _time("updated_at"),
        sa.CheckConstraint(f"state IN ({TRIAL_STATES})", name="ck_trials_state"),
        _sweep_fk("trials"),
        sa.PrimaryKeyConstraint("sweep_id", "trial_id", name="pk_trials"),
    )
    op.create_index("ix_trials_sweep_state", "trials", ["sweep_id", "state"])

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), nullable=False),
        _sweep_key(),
        sa.Column("request_hash", sa.String(64), nullable=False),
        _time("created_at"),
        _sweep_fk("idempotency_keys"),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_sweep_id", "idempotency_keys", ["sweep_id"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("trials")
    op.drop_table("sweep_tags")
    op.drop_table("sweeps")
