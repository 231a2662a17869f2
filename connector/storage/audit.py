"""The one audit writer: a row per attempt to move a record, and the queries replay needs."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from connector.storage.database import Database
from connector.storage.models import AuditRecord, utcnow

IFS_TO_PIPEDRIVE = "ifs_to_pipedrive"
PIPEDRIVE_TO_IFS = "pipedrive_to_ifs"

# AuditRecord.status values.
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRYING = "retrying"  # a transient failure; the job retries (or marks it failed at the end)
SKIPPED = "skipped"
REPLAYED = "replayed"  # a failed row whose replay has been queued
STATUSES = (SUCCEEDED, FAILED, SKIPPED, RETRYING, REPLAYED)
FINAL_STATUSES = (SUCCEEDED, FAILED, SKIPPED)  # the attempt will not run again by itself


@dataclass
class Attempt:
    """What one attempt did; filled in by the code inside `AuditLog.attempt`."""

    tenant: str
    direction: str
    entity: str
    record_key: str
    operation: str = "sync"
    status: str = SUCCEEDED
    error: str | None = None
    request_summary: dict[str, Any] | None = None
    response_summary: dict[str, Any] | None = None
    replay_task: str | None = None
    replay_args: dict[str, Any] | None = None
    replay_of: int | None = None
    correlation_id: str | None = None
    attempt: int = 1
    started_at: datetime = field(default_factory=utcnow)
    audit_id: int | None = None

    def skip(self, operation: str, reason: str) -> None:
        self.operation, self.status, self.error = operation, SKIPPED, reason


class AuditLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    @contextmanager
    def attempt(self, attempt: Attempt) -> Iterator[Attempt]:
        """Time the block and write its row; an exception marks the row failed and propagates."""
        started = time.perf_counter()
        try:
            yield attempt
        except Exception as error:
            attempt.status = FAILED
            attempt.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            self.write(attempt, duration_ms=int((time.perf_counter() - started) * 1000))

    def write(self, attempt: Attempt, *, duration_ms: int | None = None) -> int:
        with self.database.session() as session:
            row = AuditRecord(
                tenant=attempt.tenant,
                direction=attempt.direction,
                entity=attempt.entity,
                record_key=attempt.record_key,
                operation=attempt.operation,
                status=attempt.status,
                attempt=attempt.attempt,
                error=attempt.error,
                request_summary=attempt.request_summary,
                response_summary=attempt.response_summary,
                replay_task=attempt.replay_task,
                replay_args=attempt.replay_args,
                replay_of=attempt.replay_of,
                correlation_id=attempt.correlation_id,
                started_at=attempt.started_at,
                finished_at=utcnow(),
                duration_ms=duration_ms,
            )
            session.add(row)
            session.flush()
            attempt.audit_id = row.id
            return row.id

    def get(self, audit_id: int) -> AuditRecord | None:
        with self.database.session() as session:
            return session.get(AuditRecord, audit_id)

    def latest_failed(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Failed rows that are still the newest attempt for their record (not fixed since),
        oldest first; plan rows (key "*") and rows without a replay task are left out."""
        # NOT EXISTS a newer row of the same record: the failed rows come from ix_audit_status
        # and each check from ix_audit_record, so the cost follows the failures, not the log.
        newer = aliased(AuditRecord)
        fixed_since = (
            select(newer.id)
            .where(
                newer.tenant == AuditRecord.tenant,
                newer.entity == AuditRecord.entity,
                newer.record_key == AuditRecord.record_key,
                newer.id > AuditRecord.id,
            )
            .exists()
        )
        query = select(AuditRecord).where(
            AuditRecord.status == FAILED,
            AuditRecord.replay_task.is_not(None),
            AuditRecord.record_key != "*",
            ~fixed_since,
        )
        if tenant:
            query = query.where(AuditRecord.tenant == tenant)
        if since:
            query = query.where(AuditRecord.started_at >= since)
        with self.database.session() as session:
            return list(session.scalars(query.order_by(AuditRecord.id)))

    def story(self, tenant: str, entity: str, record_keys: Sequence[str]) -> list[AuditRecord]:
        """Every attempt on one record (under any of its keys, e.g. the order number and the
        `deal:<id>` of a stage push that failed before it knew the order), oldest first."""
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(AuditRecord)
                    .where(
                        AuditRecord.tenant == tenant,
                        AuditRecord.entity == entity,
                        AuditRecord.record_key.in_(list(record_keys)),
                    )
                    .order_by(AuditRecord.id)
                )
            )

    def replays_of(self, audit_ids: Sequence[int]) -> list[AuditRecord]:
        """The attempts that replayed the given rows, oldest first."""
        if not audit_ids:
            return []
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.replay_of.in_(list(audit_ids)))
                    .order_by(AuditRecord.id)
                )
            )

    def list(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if tenant:
            query = query.where(AuditRecord.tenant == tenant)
        if status:
            query = query.where(AuditRecord.status == status)
        if since:
            query = query.where(AuditRecord.started_at >= since)
        with self.database.session() as session:
            return list(session.scalars(query))

    def mark_failed(self, audit_id: int) -> bool:
        """Turn a retrying row into a failed one (its retries are exhausted), so replay finds
        it; False if it was not (or no longer) retrying."""
        with self.database.session() as session:
            row = session.get(AuditRecord, audit_id, with_for_update=True)
            if row is None or row.status != RETRYING:
                return False
            row.status = FAILED
            return True

    def mark_replayed(self, audit_id: int, requested_by: str | None = None) -> bool:
        """Flag a failed row as replayed, with who asked for it and when; False if it was not
        (or no longer) failed."""
        with self.database.session() as session:
            row = session.get(AuditRecord, audit_id, with_for_update=True)
            if row is None or row.status != FAILED:
                return False
            row.status = REPLAYED
            row.replayed_by = requested_by[:128] if requested_by else None
            row.replayed_at = utcnow()
            return True
