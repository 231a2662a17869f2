"""Refused webhook deliveries are kept (briefly) in webhook_refusals, not only counted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_refusals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_refusals")),
    )
    op.create_index("ix_webhook_refusals_tenant", "webhook_refusals", ["tenant", "refused_at"])
    op.create_index("ix_webhook_refusals_refused_at", "webhook_refusals", ["refused_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_refusals_refused_at", table_name="webhook_refusals")
    op.drop_index("ix_webhook_refusals_tenant", table_name="webhook_refusals")
    op.drop_table("webhook_refusals")
