"""Work items tried before: the items of one record whose attempt may have run already.

A create attempt asks for them (connector.sync.engine): an earlier release of the record
that never finished may have sent its POST, so the attempt searches Pipedrive first. A
partial index keeps the question one probe (few items are released or tried at a time).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIED = "attempts > 0 OR released_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_work_items_tried",
        "work_items",
        ["tenant", "entity", "record_key"],
        postgresql_where=sa.text(TRIED),
        sqlite_where=sa.text(TRIED),
    )


def downgrade() -> None:
    op.drop_index("ix_work_items_tried", table_name="work_items")
