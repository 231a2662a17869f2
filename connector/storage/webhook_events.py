"""Webhook events: every read and write of the webhook_events table, and their statuses."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update

from connector.storage.database import Database
from connector.storage.idmap import ORDER, IdMap
from connector.storage.models import WebhookEvent, utcnow
from connector.storage.upsert import insert_if_absent

if TYPE_CHECKING:
    from connector.webhooks.events import WebhookEventData

RECONCILE_ACTION = "reconcile"  # the action of a synthetic event made by reconciliation
DETAIL_LIMIT = 2000
_KEY = ("tenant", "event_id")


class WebhookEventStatus(StrEnum):
    RECEIVED = "received"  # persisted, not handed to the broker (its enqueue failed)
    ENQUEUED = "enqueued"  # committed to be handed to the broker, which follows the commit
    APPLIED = "applied"  # IFS was changed for this event
    IGNORED = "ignored"  # nothing to do (echo, stale, unmapped, not linked…); `detail` says why
    FAILED = "failed"  # IFS refused or could not be reached; a retry or replay may succeed


# An event in one of these states is never processed again.
FINISHED = (WebhookEventStatus.APPLIED, WebhookEventStatus.IGNORED)
# Not yet handled by a worker: the message that should handle it may have been lost (a broker
# restarted without persistence, a worker killed between taking and recording it). A failed
# event has its audit row, and a retry or replay of its own.
UNFINISHED = (WebhookEventStatus.RECEIVED, WebhookEventStatus.ENQUEUED)


@dataclass(frozen=True)
class StoredEvent:
    """The row an event went to; `created` is False when it was there already (a duplicate)."""

    id: int
    status: str
    created: bool


@dataclass(frozen=True)
class Stuck:
    """An event that never reached a final status."""

    id: int
    tenant: str
    status: str


@dataclass(frozen=True)
class DeliveredEvents:
    """What Pipedrive delivered to one tenant (synthetic reconciliation events left out)."""

    count: int
    last_received_at: datetime | None


class WebhookEvents:
    """The webhook_events table: the unique (tenant, event_id) key drops duplicates."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        tenant: str,
        event: WebhookEventData,
        payload: dict[str, Any],
        *,
        status: WebhookEventStatus,
        detail: str | None = None,
        received_at: datetime | None = None,
    ) -> StoredEvent:
        """Store a delivered event, committed on return; a duplicate (same tenant and event
        id, also when delivered concurrently) leaves the first row as it was."""
        values = {
            "tenant": tenant,
            "event_id": event.event_id,
            "entity": event.entity[:32],
            "entity_id": event.entity_id,
            "action": event.action,
            "change_source": (event.change_source or "")[:16] or None,
            "user_id": event.user_id,
            "event_time": event.timestamp,
            "payload": payload,
            "status": status.value,
            "detail": detail,
            "received_at": received_at or utcnow(),
        }
        # One statement in autocommit: one round trip, committed when it returns (the
        # receiver enqueues only after that), where BEGIN … COMMIT would take three.
        row_id = self.database.statement(
            lambda connection: insert_if_absent(connection, WebhookEvent, values, key=_KEY)
        )
        if row_id is not None:
            return StoredEvent(row_id, status, created=True)
        existing = self._find(tenant, event.event_id)
        assert existing is not None, "the unique key refused the insert, so the row exists"
        return StoredEvent(existing.id, existing.status, created=False)

    def add_reconciliation(
        self,
        tenant: str,
        event_id: str,
        deal_id: int,
        event_time: datetime | None,
        payload: dict[str, Any],
    ) -> int | None:
        """The row id of a synthetic event (stored as enqueued) for reconciliation to push;
        None when that event already finished or another run is storing it right now.
        A failed earlier try is handed back to be retried."""
        existing = self._find(tenant, event_id)
        if existing is not None:
            return None if existing.status in FINISHED else existing.id
        values = {
            "tenant": tenant,
            "event_id": event_id,
            "entity": "deal",
            "entity_id": deal_id,
            "action": RECONCILE_ACTION,
            "change_source": RECONCILE_ACTION,
            "event_time": event_time,
            "payload": payload,
            "status": WebhookEventStatus.ENQUEUED.value,
            "received_at": utcnow(),
        }
        with self.database.session() as session:
            return insert_if_absent(session, WebhookEvent, values, key=_KEY)

    def _find(self, tenant: str, event_id: str) -> WebhookEvent | None:
        with self.database.session() as session:
            return session.scalar(
                select(WebhookEvent).where(
                    WebhookEvent.tenant == tenant, WebhookEvent.event_id == event_id
                )
            )

    def mark_enqueued(self, row_id: int) -> None:
        """Received → enqueued; only from received: a worker may already have finished it."""
        self._move(row_id, WebhookEventStatus.RECEIVED, WebhookEventStatus.ENQUEUED)

    def mark_received(self, row_id: int) -> None:
        """Enqueued → received, after its enqueue failed; only from enqueued (as above)."""
        self._move(row_id, WebhookEventStatus.ENQUEUED, WebhookEventStatus.RECEIVED)

    def _move(self, row_id: int, source: WebhookEventStatus, target: WebhookEventStatus) -> None:
        with self.database.session() as session:
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == row_id, WebhookEvent.status == source.value)
                .values(status=target.value)
            )

    def unfinished(
        self,
        grace_s: float,
        *,
        tenants: Collection[str],
        limit: int,
        now: datetime | None = None,
    ) -> list[Stuck]:
        """Events of `tenants` still unfinished `grace_s` after they arrived and after
        the sweeper last queued them (`processed_at`), oldest first, at most `limit`."""
        if not tenants:
            return []
        before = (now or utcnow()) - timedelta(seconds=grace_s)
        with self.database.session() as session:
            rows = session.execute(
                select(WebhookEvent.id, WebhookEvent.tenant, WebhookEvent.status)
                .where(
                    WebhookEvent.tenant.in_(list(tenants)),
                    WebhookEvent.status.in_([status.value for status in UNFINISHED]),
                    WebhookEvent.received_at < before,
                    or_(WebhookEvent.processed_at.is_(None), WebhookEvent.processed_at < before),
                )
                .order_by(WebhookEvent.id)
                .limit(limit)
            ).all()
        return [Stuck(int(row_id), str(tenant), str(status)) for row_id, tenant, status in rows]

    def mark_requeued(self, row_id: int, *, now: datetime | None = None) -> None:
        """The sweeper queued this unfinished event again: enqueued, stamped with the time
        (so the next sweep leaves it alone for a grace period); a finished one is left."""
        with self.database.session() as session:
            session.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == row_id,
                    WebhookEvent.status.in_([status.value for status in UNFINISHED]),
                )
                .values(status=WebhookEventStatus.ENQUEUED.value, processed_at=now or utcnow())
            )

    def get(self, tenant: str, row_id: int) -> WebhookEvent | None:
        """The event row, if it exists and belongs to `tenant`."""
        with self.database.session() as session:
            row = session.get(WebhookEvent, row_id)
            return row if row is not None and row.tenant == tenant else None

    def finish(
        self,
        row_id: int,
        status: WebhookEventStatus,
        detail: str,
        *,
        deal_time: datetime | None = None,
    ) -> None:
        """Record the event's outcome and, for an event that carries its deal's newest state,
        the deal's event time in the id map (in the same transaction)."""
        with self.database.session() as session:
            row = session.get(WebhookEvent, row_id)
            if row is None:
                return
            row.status, row.detail = status.value, detail[:DETAIL_LIMIT]
            row.processed_at = utcnow()
            if deal_time is not None and row.entity_id is not None:
                IdMap(self.database).advance_last_event(
                    row.tenant, ORDER, row.entity_id, deal_time, session=session
                )

    def finished_deal_events_at(
        self, tenant: str, deal_id: int, moment: datetime, *, excluding: int
    ) -> list[WebhookEvent]:
        """Finished events of one deal stamped with exactly `moment`, except row `excluding`."""
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(WebhookEvent).where(
                        WebhookEvent.tenant == tenant,
                        WebhookEvent.entity == "deal",
                        WebhookEvent.entity_id == deal_id,
                        WebhookEvent.event_time == moment,
                        WebhookEvent.status.in_([status.value for status in FINISHED]),
                        WebhookEvent.id != excluding,
                    )
                )
            )

    def counts_by_status(self, tenant: str) -> dict[str, int]:
        """How many of the tenant's events stand in each status (absent statuses left out)."""
        with self.database.session() as session:
            rows = session.execute(
                select(WebhookEvent.status, func.count())
                .where(WebhookEvent.tenant == tenant)
                .group_by(WebhookEvent.status)
            ).all()
        return {str(status): int(count) for status, count in rows}

    def delivered(self, tenant: str) -> DeliveredEvents:
        """Count and newest receipt time of the events Pipedrive delivered to `tenant`."""
        with self.database.session() as session:
            count, last = session.execute(
                select(func.count(), func.max(WebhookEvent.received_at)).where(
                    WebhookEvent.tenant == tenant, WebhookEvent.action != RECONCILE_ACTION
                )
            ).one()
        return DeliveredEvents(int(count or 0), last)

    def recent(self, tenant: str | None = None, limit: int = 100) -> list[WebhookEvent]:
        """The newest events (of one tenant, or of all), newest first."""
        query = select(WebhookEvent)
        if tenant:
            query = query.where(WebhookEvent.tenant == tenant).order_by(
                WebhookEvent.received_at.desc()
            )
        else:
            query = query.order_by(WebhookEvent.id.desc())
        with self.database.session() as session:
            return list(session.scalars(query.limit(limit)))

    def of_record(self, tenant: str, entity: str, entity_id: int) -> list[WebhookEvent]:
        """Every event about one Pipedrive record (e.g. "deal", 42), oldest first."""
        return self.of_records(tenant, entity, [entity_id])

    def of_records(self, tenant: str, entity: str, entity_ids: list[int]) -> list[WebhookEvent]:
        """Every event about any of these Pipedrive records of one kind, oldest first."""
        if not entity_ids:
            return []
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(WebhookEvent)
                    .where(
                        WebhookEvent.tenant == tenant,
                        WebhookEvent.entity == entity,
                        WebhookEvent.entity_id.in_(entity_ids),
                    )
                    .order_by(WebhookEvent.id)
                )
            )
