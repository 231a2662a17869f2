"""Console: who replayed a failed row (replayed_by/at), and indexes for the console's pages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add columns with every ALTER; Postgres runs plain ALTERs.
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("replayed_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_audit_correlation",
        "audit_log",
        ["correlation_id", "entity", "record_key", "id"],
        unique=False,
    )
    op.create_index("ix_audit_status", "audit_log", ["status", "id"], unique=False)
    op.create_index("ix_audit_operation", "audit_log", ["operation", "id"], unique=False)
    op.create_index(
        "ix_webhook_events_tenant_received",
        "webhook_events",
        ["tenant", "received_at"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_events_entity",
        "webhook_events",
        ["tenant", "entity", "entity_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_entity", table_name="webhook_events")
    op.drop_index("ix_webhook_events_tenant_received", table_name="webhook_events")
    op.drop_index("ix_audit_operation", table_name="audit_log")
    op.drop_index("ix_audit_status", table_name="audit_log")
    op.drop_index("ix_audit_correlation", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("replayed_at")
        batch.drop_column("replayed_by")
