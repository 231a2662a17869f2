"""The id map remembers a record that disappeared from IFS reads (`on_ifs_missing`).

Set once the tenant's policy has been applied (ignore: nothing written; close: its deal
marked lost), so that later plans do not handle it again; cleared when IFS has it again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("id_map") as batch:
        batch.add_column(sa.Column("ifs_missing_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("id_map") as batch:
        batch.drop_column("ifs_missing_at")
