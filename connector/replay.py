"""Replay: queue again the job that a failed audit row describes.

Idempotent: a row is marked replayed before its job is queued, so it is queued once however
often it is replayed; the job itself is an idempotent upsert or push. The queue is passed in
(`Enqueue`), so the CLI, the replay tasks and the demo share this code without Celery here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from connector.jobs import Enqueue
from connector.storage.audit import AuditLog
from connector.storage.models import AuditRecord


@dataclass(frozen=True)
class Replay:
    audit: AuditLog
    enqueue: Enqueue

    def latest_failed(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Failed rows that are still the newest attempt for their record (not fixed since)."""
        return self.audit.latest_failed(tenant, since)

    def requeue(self, row: AuditRecord, requested_by: str | None = None) -> bool:
        """Queue the job the failed row describes again, noting on the row who asked for it;
        False if it has none or was not (or is no longer) failed."""
        if row.replay_task is None or row.replay_args is None:
            return False
        # Marked (and committed) first: two replays of one row queue its job once.
        if not self.audit.mark_replayed(row.id, requested_by):
            return False
        self.enqueue(row.replay_task, {**row.replay_args, "replay_of": row.id})
        return True

    def one(self, audit_id: int, requested_by: str | None = None) -> bool:
        """Replay one failed row by id; False if there is no such failed, replayable row."""
        row = self.audit.get(audit_id)
        return row is not None and self.requeue(row, requested_by)

    def failed(
        self,
        tenant: str | None = None,
        since: datetime | None = None,
        requested_by: str | None = None,
    ) -> int:
        """Replay every record whose newest attempt failed; the number queued."""
        return sum(self.requeue(row, requested_by) for row in self.latest_failed(tenant, since))
