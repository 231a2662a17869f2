"""Overdue syncs in `status`, and the freshness gauges of /metrics, from the audit rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from connector.diagnostics.freshness import (
    last_successful_syncs,
    last_successful_syncs_by_tenant,
    measure_sync_metrics,
)
from connector.diagnostics.status import tenant_status
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, SKIPPED, Attempt, AuditLog
from tests.connector.diagnostics.conftest import MakeRuntime
from tests.connector.webhooks.support import tenant_body


def _plan(audit: AuditLog, tenant: str, entity: str, status: str) -> None:
    audit.write(
        Attempt(
            tenant,
            IFS_TO_PIPEDRIVE,
            entity,
            "*",
            operation="plan",
            status=status,
            correlation_id=f"run-{tenant}",
            response_summary={"read": 0, "queued": 0, "unchanged": 0},
        )
    )


def test_a_sync_that_missed_a_scheduled_run_is_overdue(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for({**tenant_body(), "schedule": "*/15 * * * *"})
    audit = AuditLog(runtime.database)
    _plan(audit, tenant, "customer", SKIPPED)  # nothing changed: still a successful sync
    _plan(audit, tenant, "order", "succeeded")
    _plan(audit, tenant, "order", FAILED)  # a later failed plan is no success
    synced = last_successful_syncs(runtime, tenant)
    assert set(synced) == {"customer", "order"}
    assert last_successful_syncs_by_tenant(runtime)[tenant] == synced  # the console's read

    on_time = tenant_status(runtime, tenant, now=datetime.now(UTC) + timedelta(minutes=4))
    assert on_time.overdue == []
    assert not [p for p in on_time.problems if p.startswith("overdue")]

    late = tenant_status(runtime, tenant, now=datetime.now(UTC) + timedelta(minutes=25))
    assert [entry["entity"] for entry in late.overdue] == ["customer", "order"]
    overdue = [p for p in late.problems if p.startswith("overdue")]
    assert len(overdue) == 2 and "'*/15 * * * *'" in overdue[0]


def test_freshness_gauges_come_from_the_database(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for()
    audit = AuditLog(runtime.database)
    _plan(audit, tenant, "order", "succeeded")
    audit.write(
        Attempt(tenant, IFS_TO_PIPEDRIVE, "order", "O-1", status=FAILED, replay_task="sync_order")
    )
    measure_sync_metrics(runtime, [tenant])
    stamp = REGISTRY.get_sample_value(
        "mlc_last_successful_sync_timestamp_seconds", {"tenant": tenant, "entity": "order"}
    )
    assert stamp is not None
    assert abs(stamp - last_successful_syncs(runtime, tenant)["order"].timestamp()) < 1e-3
    assert REGISTRY.get_sample_value("mlc_failed_records_waiting", {"tenant": tenant}) == 1
