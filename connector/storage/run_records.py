"""Each run's records and where they stand, kept by the audit writer in its own transaction.

Only connector.storage.audit calls these (the one writer of audit rows and of their run
entries); connector.storage.runs reads the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from connector.storage.models import AuditRecord, RunRecord, utcnow
from connector.storage.upsert import upsert

PLAN_KEY = "*"


def enter(session: Session, row: AuditRecord, started_at: datetime | None = None) -> None:
    """Make `row` the record's attempt in its run (a newer row of the record replaces it);
    `started_at` is when this attempt began, for a folded row whose own is its first."""
    if row.correlation_id is None:
        return
    queued = None
    if row.record_key == PLAN_KEY:
        queued = int((row.response_summary or {}).get("queued", 0))
    upsert(
        session,
        RunRecord,
        {
            "run_id": row.correlation_id,
            "entity": row.entity,
            "record_key": row.record_key,
            "tenant": row.tenant,
            "audit_id": row.id,
            "status": row.status,
            "queued": queued,
            "started_at": started_at or row.started_at,
            "finished_at": row.finished_at or utcnow(),
        },
        key=("run_id", "entity", "record_key"),
    )


def restate(session: Session, audit_ids: Sequence[int], status: str) -> None:
    """The rows' status changed: so does every run entry that stands for one of them."""
    if audit_ids:
        session.execute(
            update(RunRecord).where(RunRecord.audit_id.in_(list(audit_ids))).values(status=status)
        )
