"""The refusals store: what is kept, the per-process write budget with folded counts, pruning."""

from __future__ import annotations

from datetime import timedelta

from connector.storage.models import WebhookRefusal, utcnow
from connector.storage.webhook_refusals import Refusal, WebhookRefusals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_refusal_is_kept_with_tenant_reason_status_and_address(database, tenant):
    refusals = WebhookRefusals(database)

    assert refusals.record(Refusal(tenant, "bad_auth", 401, "203.0.113.9"))
    refusals.record(Refusal(tenant, "bad_payload", 400, None))

    rows = [
        (r.tenant, r.reason, r.http_status, r.remote_addr, r.count) for r in refusals.recent(tenant)
    ]
    assert rows == [
        (tenant, "bad_payload", 400, None, 1),
        (tenant, "bad_auth", 401, "203.0.113.9", 1),
    ]


def test_past_the_write_budget_refusals_are_folded_into_the_next_row(database, tenant):
    clock = Clock()
    refusals = WebhookRefusals(database, writes_per_s=1.0, burst=2.0, clock=clock)
    refusal = Refusal(tenant, "bad_auth", 401, "198.51.100.7")

    written = [refusals.record(refusal) for _ in range(10)]
    clock.now += 1.0
    refusals.record(refusal)

    assert written == [True, True] + [False] * 8
    assert [row.count for row in refusals.recent(tenant)] == [9, 1, 1]
    since = utcnow() - timedelta(minutes=1)
    assert refusals.counts_since(since)[tenant] == 11


def test_unknown_tenants_are_kept_as_none_and_counted_together(database, tenant):
    refusals = WebhookRefusals(database)
    since = utcnow() - timedelta(seconds=1)
    before = refusals.counts_since(since).get(None, 0)

    refusals.record(Refusal(None, "unknown_tenant", 401, "192.0.2.1"))

    assert refusals.counts_since(since)[None] == before + 1
    assert refusals.recent(limit=1)[0].tenant is None


def test_rows_past_the_retention_are_pruned_by_the_writer(database, tenant):
    with database.session() as session:
        session.add(
            WebhookRefusal(
                refused_at=utcnow() - timedelta(days=4),
                tenant=tenant,
                reason="bad_auth",
                http_status=401,
            )
        )
    refusals = WebhookRefusals(database, retention=timedelta(days=3))

    refusals.record(Refusal(tenant, "too_large", 413, None))

    assert [row.reason for row in refusals.recent(tenant)] == ["too_large"]
