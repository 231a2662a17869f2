"""Each run's records and totals (run_records, run_totals), kept by the audit writer; an
index of the failed audit rows and a wider index of each record's rows.

The console's Runs page counted each run's rows in the audit log on every request (tens of
milliseconds a run with thousands of records); it now reads a row per run. Existing audit
rows are entered here: per run and record its newest row, as the old count read them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILED_WAITING = sa.text("status = 'failed' AND replay_task IS NOT NULL AND record_key <> '*'")
COUNTERS = (
    "plans",
    "entities_planned",
    "planned",
    "plans_failed",
    "done",
    "retrying",
    "records_failed",
)
# What an entry counts for in its run's totals (as connector.storage.run_records counts it
# at this revision): plans by their final status, records by their current one.
PLAN = "record_key = '*'"
RECORD = "record_key <> '*'"
PLANNED = f"{PLAN} AND status IN ('succeeded', 'failed', 'skipped', 'deferred')"
TOTALS = {
    "plans": PLAN,
    "entities_planned": PLANNED,
    "planned": PLANNED,
    "plans_failed": f"{PLAN} AND status IN ('failed', 'deferred')",
    "done": f"{RECORD} AND status IN ('succeeded', 'skipped', 'replayed', 'superseded',"
    " 'deferred')",
    "retrying": f"{RECORD} AND status = 'retrying'",
    "records_failed": f"{RECORD} AND status = 'failed'",
}


def upgrade() -> None:
    op.create_table(
        "run_records",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("record_key", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "entity", "record_key", name="pk_run_records"),
    )
    op.create_index("ix_run_records_audit", "run_records", ["audit_id"])
    op.create_table(
        "run_totals",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTERS),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_totals"),
    )
    op.create_index("ix_run_totals_newest", "run_totals", ["planned_at"])
    op.create_index("ix_run_totals_tenant_newest", "run_totals", ["tenant", "planned_at"])
    op.create_index(
        "ix_audit_failed",
        "audit_log",
        ["tenant", "entity", "record_key", "direction", "id"],
        postgresql_where=FAILED_WAITING,
        sqlite_where=FAILED_WAITING,
    )
    # With direction and id, "a newer row of this record?" is one look into the index.
    op.drop_index("ix_audit_record", table_name="audit_log")
    op.create_index(
        "ix_audit_record", "audit_log", ["tenant", "entity", "record_key", "direction", "id"]
    )
    _backfill()


def _backfill() -> None:
    connection = op.get_bind()
    connection.execute(
        sa.text(
            "INSERT INTO run_records (run_id, entity, record_key, tenant, audit_id, status,"
            " started_at, finished_at)"
            " SELECT correlation_id, entity, record_key, tenant, id, status, started_at,"
            " finished_at FROM audit_log WHERE id IN (SELECT max(id) FROM audit_log"
            " WHERE correlation_id IS NOT NULL GROUP BY correlation_id, entity, record_key)"
        )
    )
    # What each plan queued is in its JSON summary: few rows, read here on either backend.
    plans = connection.execute(
        sa.text(
            "SELECT a.id, a.response_summary FROM run_records r"
            " JOIN audit_log a ON a.id = r.audit_id WHERE r.record_key = '*'"
        )
    ).all()
    for audit_id, summary in plans:
        if isinstance(summary, str):
            summary = json.loads(summary)
        queued = int((summary or {}).get("queued", 0))
        connection.execute(
            sa.text("UPDATE run_records SET queued = :queued WHERE audit_id = :id"),
            {"queued": queued, "id": audit_id},
        )
    sums = ", ".join(
        f"sum(CASE WHEN {condition} THEN {'coalesce(queued, 0)' if name == 'planned' else 1}"
        " ELSE 0 END)"
        for name, condition in TOTALS.items()
    )
    connection.execute(
        sa.text(
            f"INSERT INTO run_totals (run_id, tenant, planned_at, started_at, finished_at,"
            f" {', '.join(TOTALS)}) SELECT run_id, min(tenant),"
            f" max(CASE WHEN {PLAN} THEN finished_at END), min(started_at), max(finished_at),"
            f" {sums} FROM run_records GROUP BY run_id"
        )
    )


def downgrade() -> None:
    op.drop_index("ix_audit_record", table_name="audit_log")
    op.create_index("ix_audit_record", "audit_log", ["tenant", "entity", "record_key"])
    op.drop_index("ix_audit_failed", table_name="audit_log")
    op.drop_index("ix_run_totals_tenant_newest", table_name="run_totals")
    op.drop_index("ix_run_totals_newest", table_name="run_totals")
    op.drop_table("run_totals")
    op.drop_index("ix_run_records_audit", table_name="run_records")
    op.drop_table("run_records")
