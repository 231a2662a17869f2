"""Replay: queue again the job that a failed audit row describes.

Idempotent: a row is marked replayed before its job is queued, so it is queued once however
often it is replayed; the job itself is an idempotent upsert, push or plan. The queue is
passed in (`Enqueue`), so the CLI, the replay tasks and the demo share this code without
Celery here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from connector.jobs import Enqueue
from connector.storage.audit import FAILED, AuditLog
from connector.storage.models import AuditRecord


@dataclass(frozen=True)
class Requeued:
    """What replaying one row did: queued, or why not; a plan row's replay is a new run."""

    audit_id: int
    queued: bool
    reason: str = ""  # why nothing was queued
    run_id: str | None = None  # the new plan run of a replayed plan row (record key "*")
    entities: int = 0  # entities that run plans


@dataclass(frozen=True)
class Replay:
    audit: AuditLog
    enqueue: Enqueue

    def latest_failed(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Failed rows that are still the newest attempt for their record (not fixed since)."""
        return self.audit.latest_failed(tenant, since)

    def queue(self, row: AuditRecord, requested_by: str | None = None) -> Requeued:
        """Queue the job the failed row describes again, noting on the row who asked for it,
        or say why not."""
        if row.replay_task is None or row.replay_args is None:
            return Requeued(row.id, False, "the row names no job to run again")
        # Marked (and committed) first: two replays of one row queue its job once.
        if not self.audit.mark_replayed(row.id, requested_by):
            current = self.audit.get(row.id)
            status = current.status if current is not None else "gone"
            return Requeued(row.id, False, f"it is {status}, not {FAILED}")
        kwargs = {**row.replay_args, "replay_of": row.id}
        run_id = None
        if row.record_key == "*":
            # A plan row is replayed as a new plan run that the caller can follow by its id.
            run_id = uuid.uuid4().hex
            kwargs["run_id"] = run_id
        self.enqueue(row.replay_task, kwargs)
        entities = len(str(row.replay_args.get("entity", "")).split(",")) if run_id else 0
        return Requeued(row.id, True, run_id=run_id, entities=entities)

    def requeue(self, row: AuditRecord, requested_by: str | None = None) -> bool:
        """Queue the job the failed row describes again; False if it has none or was not
        (or is no longer) failed."""
        return self.queue(row, requested_by).queued

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
