"""Watermarks: where a run got to and how it went, replaced atomically per tenant and job."""

from __future__ import annotations

from connector.storage.watermarks import Watermarks
from tests.connector.storage.conftest import at_once


def test_a_run_is_recorded_and_the_next_one_replaces_it(database, tenant):
    watermarks = Watermarks(database)
    assert watermarks.get(tenant, "deal_stages") is None

    watermarks.record_run(
        tenant,
        "deal_stages",
        watermark="2026-03-01T10:00:00+00:00",
        status="succeeded",
        summary={"applied": 1},
    )
    watermarks.record_run(tenant, "deal_stages", watermark=None, status="failed", summary={})

    mark = watermarks.get(tenant, "deal_stages")
    assert mark is not None and mark.last_run_at is not None
    assert (mark.watermark, mark.last_status, mark.last_summary) == (None, "failed", {})


def test_watermarks_of_a_tenant_are_listed_by_entity(database, tenant):
    watermarks = Watermarks(database)
    for entity in ("order", "customer", "deal_stages"):
        watermarks.record_run(tenant, entity, watermark="w", status="succeeded", summary={})
    watermarks.record_run(tenant + "-other", "order", watermark="w", status="succeeded", summary={})

    assert [mark.entity for mark in watermarks.of_tenant(tenant)] == [
        "customer",
        "deal_stages",
        "order",
    ]


def test_concurrent_first_runs_leave_one_row(database, tenant):
    watermarks = Watermarks(database)

    at_once(
        6,
        lambda index: watermarks.record_run(
            tenant, "deal_stages", watermark=str(index), status="succeeded", summary={"n": index}
        ),
    )

    [mark] = watermarks.of_tenant(tenant)
    assert mark.watermark in {str(index) for index in range(6)}
    assert mark.last_summary == {"n": int(mark.watermark)}
