"""Users, their tokens and the audit trail; sweeps and idempotency keys belong to a user; sweeps
may wait as ``queued`` for their owner's quota and carry the trials they may run at once
(``allowance``).

Every sweep and idempotency key stored before belongs to the bootstrap admin (``admin``, the
user GRADREG_API_TOKENS' tokens are), which this migration creates.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BOOTSTRAP_ADMIN = "admin"
STATUSES_BEFORE = (
    "'pending', 'submitted', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'"
)
STATUSES = f"'queued', {STATUSES_BEFORE}"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _owner(name: str = "owner") -> sa.Column:
    return sa.Column(
        name, sa.String(64), nullable=False, server_default=sa.text(f"'{BOOTSTRAP_ADMIN}'")
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("quotas", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        _time("created_at"),
        sa.CheckConstraint("role IN ('admin', 'member')", name="ck_users_role"),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )
    users = sa.table(
        "users",
        sa.column("name"),
        sa.column("role"),
        sa.column("quotas", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        users.insert().values(
            name=BOOTSTRAP_ADMIN, role="admin", quotas={}, created_at=sa.func.current_timestamp()
        )
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        _time("created_at"),
        _time("last_used_at", nullable=True),
        _time("expires_at", nullable=True),
        _time("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["user_name"], ["users.name"], name="fk_api_tokens_user_name_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("digest", name="uq_api_tokens_digest"),
    )
    op.create_index("ix_api_tokens_user_name", "api_tokens", ["user_name"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _time("at"),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("client", sa.String(100), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_actor_id", "audit", ["actor", "id"])

    # On SQLite these rebuild the tables; `service.store.database.upgrade` turns foreign keys
    # off around the migrations, so dropping the old sweeps table cascades to nothing.
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(_owner())
        batch.add_column(sa.Column("allowance", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("allowance_reason", sa.Text(), nullable=True))
        batch.create_foreign_key("fk_sweeps_owner_users", "users", ["owner"], ["name"])
        batch.drop_constraint("ck_sweeps_status", type_="check")
        batch.create_check_constraint("ck_sweeps_status", sa.text(f"status IN ({STATUSES})"))
    op.create_index("ix_sweeps_owner_created", "sweeps", ["owner", "created_at", "id"])
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(_owner())
        batch.drop_constraint("pk_idempotency_keys", type_="primary")
        batch.create_primary_key("pk_idempotency_keys", ["owner", "key"])
        batch.create_foreign_key("fk_idempotency_keys_owner_users", "users", ["owner"], ["name"])


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint("fk_idempotency_keys_owner_users", type_="foreignkey")
        batch.drop_constraint("pk_idempotency_keys", type_="primary")
        batch.create_primary_key("pk_idempotency_keys", ["key"])
        batch.drop_column("owner")
    op.drop_index("ix_sweeps_owner_created", table_name="sweeps")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_constraint("ck_sweeps_status", type_="check")
        batch.create_check_constraint("ck_sweeps_status", sa.text(f"status IN ({STATUSES_BEFORE})"))
        batch.drop_constraint("fk_sweeps_owner_users", type_="foreignkey")
        batch.drop_column("allowance_reason")
        batch.drop_column("allowance")
        batch.drop_column("owner")
    op.drop_table("audit")
    op.drop_table("api_tokens")
    op.drop_table("users")
