"""The sweeper queues again what never finished, once per grace period, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from connector.jobs import PUSH_STAGE
from connector.stage_push.sweep import sweep_unfinished_events
from connector.storage.database import Database
from connector.storage.models import utcnow
from connector.storage.webhook_events import WebhookEvents, WebhookEventStatus
from connector.webhooks.events import parse_payload
from tests.connector.webhooks.support import unique_tenant, v2_deal_event

GRACE_S = 300.0


@pytest.fixture
def events(postgres_url: str) -> Iterator[WebhookEvents]:
    database = Database(postgres_url)
    yield WebhookEvents(database)
    database.dispose()


def _stored(events: WebhookEvents, tenant: str, deal_id: int, status: str, age_s: float) -> int:
    payload = v2_deal_event(deal_id)
    stored = events.add(
        tenant,
        parse_payload(payload),
        payload,
        status=WebhookEventStatus(status),
        received_at=utcnow() - timedelta(seconds=age_s),
    )
    return stored.id


def _sweep(events: WebhookEvents, tenant: str) -> list[int]:
    queued: list[tuple[str, dict[str, Any]]] = []
    sweep_unfinished_events(
        events, lambda job, kwargs: queued.append((job, kwargs)), tenants=[tenant], grace_s=GRACE_S
    )
    assert all(job == PUSH_STAGE and kwargs["tenant"] == tenant for job, kwargs in queued)
    return [kwargs["webhook_event_id"] for _, kwargs in queued]


def test_events_of_tenants_this_deployment_does_not_serve_are_left_alone(
    events: WebhookEvents,
) -> None:
    # Deployments may share a database, and other tests' tenants share this one.
    ours, theirs = unique_tenant("sweep"), unique_tenant("sweep")
    mine = _stored(events, ours, 1, "enqueued", GRACE_S + 60)
    other = _stored(events, theirs, 2, "enqueued", GRACE_S + 60)

    assert _sweep(events, ours) == [mine]
    row = events.get(theirs, other)
    assert row is not None and row.processed_at is None  # not marked as queued again
    assert _sweep(events, theirs) == [other]


def test_events_left_unfinished_past_the_grace_period_are_queued_again_once(
    events: WebhookEvents,
) -> None:
    tenant = unique_tenant("sweep")
    lost_enqueued = _stored(events, tenant, 1, "enqueued", GRACE_S + 60)
    lost_received = _stored(events, tenant, 2, "received", GRACE_S + 60)
    _stored(events, tenant, 3, "enqueued", GRACE_S - 60)  # may still be in the queue
    for deal_id, status in ((4, "applied"), (5, "ignored"), (6, "failed")):
        _stored(events, tenant, deal_id, status, GRACE_S + 60)

    assert sorted(_sweep(events, tenant)) == sorted([lost_enqueued, lost_received])
    row = events.get(tenant, lost_received)
    assert row is not None and row.status == "enqueued"
    # Queued again just now: left alone for another grace period.
    assert _sweep(events, tenant) == []


def test_an_event_requeued_a_grace_period_ago_and_still_unfinished_is_queued_again(
    events: WebhookEvents,
) -> None:
    tenant = unique_tenant("sweep")
    lost = _stored(events, tenant, 1, "enqueued", 3 * GRACE_S)
    events.mark_requeued(lost, now=utcnow() - timedelta(seconds=GRACE_S + 1))
    assert _sweep(events, tenant) == [lost]


def test_an_event_that_finishes_is_never_marked_requeued(events: WebhookEvents) -> None:
    tenant = unique_tenant("sweep")
    applied = _stored(events, tenant, 1, "enqueued", GRACE_S + 60)
    events.finish(applied, WebhookEventStatus.APPLIED, "Released")
    events.mark_requeued(applied)
    row = events.get(tenant, applied)
    assert row is not None and row.status == "applied"
    assert _sweep(events, tenant) == []
