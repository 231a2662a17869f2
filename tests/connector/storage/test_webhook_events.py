"""The webhook events store: duplicates by event id, statuses, synthetic events, counts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from connector.storage.database import Database
from connector.storage.idmap import ORDER, IdMap
from connector.storage.webhook_events import (
    RECONCILE_ACTION,
    DeliveredEvents,
    WebhookEvents,
    WebhookEventStatus,
)
from connector.webhooks.events import WebhookEventData
from sandbox.tcp_proxy import TcpProxy
from tests.connector.storage.conftest import at_once

T1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
T2 = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
Status = WebhookEventStatus


def _event(event_id: str, deal_id: int = 7, moment: datetime | None = T1) -> WebhookEventData:
    return WebhookEventData(
        event_id=event_id,
        version=2,
        action="change",
        entity="deal",
        entity_id=deal_id,
        change_source="app",
        user_id=17,
        timestamp=moment,
    )


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def test_a_redelivered_event_finds_the_first_row_unchanged(database, tenant):
    events = WebhookEvents(database)

    first = events.add(tenant, _event("e-1"), {"n": 1}, status=Status.RECEIVED)
    again = events.add(tenant, _event("e-1"), {"n": 2}, status=Status.IGNORED, detail="x")
    other_tenant = events.add(tenant + "-o", _event("e-1"), {"n": 3}, status=Status.RECEIVED)

    assert first.created and not again.created and other_tenant.created
    assert (again.id, again.status) == (first.id, Status.RECEIVED)
    row = events.get(tenant, first.id)
    assert row is not None and (row.payload, row.status, row.detail) == ({"n": 1}, "received", None)
    assert (row.entity_id, row.event_time is not None, row.received_at is not None) == (
        7,
        True,
        True,
    )
    assert events.get(tenant + "-o", first.id) is None  # rows of another tenant are not served


def test_concurrent_deliveries_of_one_event_create_one_row(database, tenant):
    events = WebhookEvents(database)

    stored = at_once(6, lambda _: events.add(tenant, _event("e-1"), {}, status=Status.RECEIVED))

    assert sum(s.created for s in stored) == 1 and len({s.id for s in stored}) == 1


def test_an_event_is_marked_enqueued_only_while_received(database, tenant):
    events = WebhookEvents(database)
    waiting = events.add(tenant, _event("e-1"), {}, status=Status.RECEIVED).id
    done = events.add(tenant, _event("e-2"), {}, status=Status.RECEIVED).id
    events.finish(done, Status.APPLIED, "written")  # the worker was faster than the receiver

    events.mark_enqueued(waiting)
    events.mark_enqueued(done)

    assert events.get(tenant, waiting).status == Status.ENQUEUED
    assert events.get(tenant, done).status == Status.APPLIED


def test_finish_records_the_outcome_and_moves_the_deals_event_time_forward_only(database, tenant):
    IdMap(database).save(tenant, ORDER, "O-1", pipedrive_id=7)
    events = WebhookEvents(database)
    newer = events.add(tenant, _event("e-2", moment=T2), {}, status=Status.ENQUEUED).id
    older = events.add(tenant, _event("e-1", moment=T1), {}, status=Status.ENQUEUED).id

    events.finish(newer, Status.APPLIED, "x" * 5000, deal_time=T2)
    events.finish(older, Status.IGNORED, "older", deal_time=T1)

    row = events.get(tenant, newer)
    assert row is not None and row.status == Status.APPLIED and row.processed_at is not None
    assert row.detail == "x" * 2000
    entry = IdMap(database).get(tenant, ORDER, "O-1")
    assert entry is not None and _aware(entry.last_event_at) == T2


def test_finished_events_of_a_deal_at_one_second(database, tenant):
    events = WebhookEvents(database)
    this = events.add(tenant, _event("e-1"), {}, status=Status.ENQUEUED).id
    applied = events.add(tenant, _event("e-2"), {}, status=Status.ENQUEUED).id
    events.add(tenant, _event("e-3"), {}, status=Status.ENQUEUED)  # not finished
    failed = events.add(tenant, _event("e-4"), {}, status=Status.ENQUEUED).id
    later = events.add(tenant, _event("e-5", moment=T2), {}, status=Status.ENQUEUED).id
    other_deal = events.add(tenant, _event("e-6", deal_id=8), {}, status=Status.ENQUEUED).id
    for row_id in (this, applied, later, other_deal):
        events.finish(row_id, Status.APPLIED, "")
    events.finish(failed, Status.FAILED, "")

    found = events.finished_deal_events_at(tenant, 7, T1, excluding=this)

    assert [row.id for row in found] == [applied]


def test_a_synthetic_event_is_handed_out_until_it_finishes(database, tenant):
    events = WebhookEvents(database)

    first = events.add_reconciliation(tenant, "reconcile:7:1", 7, T1, {"meta": {}})
    again = events.add_reconciliation(tenant, "reconcile:7:1", 7, T1, {"meta": {}})
    assert first is not None and again == first
    row = events.get(tenant, first)
    assert row is not None and (row.action, row.status) == (RECONCILE_ACTION, Status.ENQUEUED)

    events.finish(first, Status.FAILED, "IFS down")
    assert events.add_reconciliation(tenant, "reconcile:7:1", 7, T1, {}) == first
    events.finish(first, Status.IGNORED, "nothing to do")
    assert events.add_reconciliation(tenant, "reconcile:7:1", 7, T1, {}) is None


def test_counts_by_status_and_delivered_events(database, tenant):
    events = WebhookEvents(database)
    received_at = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    events.add(tenant, _event("e-1"), {}, status=Status.RECEIVED, received_at=received_at)
    events.add(tenant, _event("e-2"), {}, status=Status.FAILED)
    events.add(tenant, _event("e-3"), {}, status=Status.FAILED)
    events.add_reconciliation(tenant, "reconcile:7:1", 7, T1, {})

    assert events.counts_by_status(tenant) == {"received": 1, "failed": 2, "enqueued": 1}
    delivered = events.delivered(tenant)
    assert delivered.count == 3 and delivered.last_received_at is not None
    assert _aware(delivered.last_received_at) > received_at
    assert events.delivered(tenant + "-none") == DeliveredEvents(0, None)


def test_a_pooled_connection_that_died_fails_one_add_as_sqlalchemy_error_and_the_next_succeeds(
    postgres_url, tenant
):
    """The add writes through the pooled connection's cursor: a connection that died while
    pooled (Postgres restarted) raises an SQLAlchemyError flagged invalidated (the receiver
    answers 503) and leaves the pool, as SQLAlchemy's own execute would."""
    direct = make_url(postgres_url)
    with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        database = Database(direct.set(port=proxy.port).render_as_string(hide_password=False))
        try:
            events = WebhookEvents(database)
            assert events.add(tenant, _event("e-1"), {}, status=Status.ENQUEUED).created
            proxy.cut()  # the pooled connection is closed under it
            proxy.restore()
            with pytest.raises(DBAPIError) as failed:
                events.add(tenant, _event("e-2"), {}, status=Status.ENQUEUED)
            assert failed.value.connection_invalidated
            again = events.add(tenant, _event("e-2"), {"n": 2}, status=Status.ENQUEUED)
        finally:
            database.dispose()
    assert again.created
    row = WebhookEvents(Database(postgres_url)).get(tenant, again.id)
    assert row is not None and row.payload == {"n": 2}
