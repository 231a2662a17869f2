"""Records' life: an id-map entry can be tombstoned (deleted in Pipedrive, policy respect).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER TABLE … DROP COLUMN on the way down otherwise.
    with op.batch_alter_table("id_map") as batch:
        batch.add_column(sa.Column("tombstoned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("tombstone_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("id_map") as batch:
        batch.drop_column("tombstone_reason")
        batch.drop_column("tombstoned_at")
