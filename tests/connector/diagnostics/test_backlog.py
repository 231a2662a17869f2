"""A tenant's stored records in its status: how many wait, and why (burst budget, a spent
daily budget, a pause after Pipedrive's 403); tenants gone from the file keep theirs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from connector.diagnostics.backlog import stored_backlog
from connector.diagnostics.status import tenant_status
from connector.pipedrive.client import burst_limits, daily_limit, rate_limit_key
from connector.runtime import Runtime
from connector.storage.audit import AuditLog
from connector.storage.work_items import WorkItems
from connector.sync.engine import Plan, plan_audit
from tests.connector.diagnostics.conftest import MakeRuntime

SYNC_ORDER = "ml_connector.sync_order"


@pytest.fixture(autouse=True)
def _forget_stored() -> Iterator[None]:
    """Items stored here are removed after each test (other tests sweep every tenant's)."""
    yield
    for runtime, tenant in _STORED:
        WorkItems(runtime.database).forget(tenant)
    _STORED.clear()


_STORED: list[tuple[Runtime, str]] = []


def _store(runtime: Runtime, tenant: str, count: int) -> None:
    _STORED.append((runtime, tenant))
    run_id = f"{tenant}-run"  # a run id is unique across tenants
    page = [
        {"entity": "order", "tenant": tenant, "key": f"O{i}", "run_id": run_id}
        for i in range(count)
    ]
    WorkItems(runtime.database).add(tenant, run_id, SYNC_ORDER, page)


def _running_run(runtime: Runtime, tenant: str, queued: int) -> None:
    """A run whose plans stored `queued` orders and none of them is done yet."""
    run_id = f"{tenant}-run"
    for entity in ("customer", "order"):
        plan = Plan(tenant, entity, run_id, queued=queued if entity == "order" else 0)
        AuditLog(runtime.database).write(plan_audit(plan))


def test_stored_records_show_their_count_the_oldest_and_nothing_holding_them(
    runtime_for: MakeRuntime,
) -> None:
    runtime, tenant = runtime_for()
    _store(runtime, tenant, 5)
    WorkItems(runtime.database).release({tenant: 2})

    backlog = stored_backlog(runtime, runtime.tenant(tenant), datetime.now(UTC))

    assert (backlog["waiting"], backlog["due"], backlog["in_flight"]) == (3, 3, 2)
    assert backlog["oldest_waiting_at"] is not None
    assert backlog["waits_for"] == []  # the next tick releases them


def test_records_waiting_for_a_spent_daily_budget_say_so_and_when_not_looking_stuck(
    runtime_for: MakeRuntime,
) -> None:
    runtime, tenant = runtime_for()
    config = runtime.tenant(tenant)
    _store(runtime, tenant, 40)
    _running_run(runtime, tenant, 40)
    # Pipedrive says the company's day is spent down to the reserve (x-daily-requests-left).
    day = daily_limit(config.pipedrive)
    bulk_day = daily_limit(config.pipedrive, bulk=True)
    runtime.coordination.limiter.align(rate_limit_key(tenant), day, bulk_day.available)

    status = tenant_status(runtime, tenant)

    (hold,) = status.backlog["waits_for"]
    assert hold["limit"] == "daily" and hold["used"] == bulk_day.available
    assert 86_000 < hold["seconds"] <= 86_400 and hold["until"] > datetime.now(UTC).isoformat()
    assert "waiting for the daily Pipedrive budget" in hold["detail"]
    assert status.last_run is not None and status.last_run["state"] == "running"
    assert "daily Pipedrive budget" in status.last_run["waiting_for"]
    (problem,) = [p for p in status.problems if "not stuck" in p]
    assert problem.startswith("40 stored record(s) wait, not stuck: waiting for the daily")


def test_records_of_a_tenant_paused_after_a_403_wait_for_the_pause(
    runtime_for: MakeRuntime,
) -> None:
    runtime, tenant = runtime_for()
    _store(runtime, tenant, 3)
    runtime.coordination.limiter.pause(rate_limit_key(tenant), 60)

    backlog = tenant_status(runtime, tenant).backlog

    (hold,) = backlog["waits_for"]
    assert hold["limit"] == "paused" and 55 < hold["seconds"] <= 60
    assert "403 block page" in hold["detail"]


def test_a_spent_burst_window_is_pacing_not_a_problem(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for()
    config = runtime.tenant(tenant)
    _store(runtime, tenant, 30)
    limits = [*burst_limits(config.pipedrive, "pipedrive"), daily_limit(config.pipedrive)]
    for _ in range(config.pipedrive.burst_limit):
        assert runtime.coordination.limiter.try_acquire(rate_limit_key(tenant), 5, limits) == 0

    status = tenant_status(runtime, tenant)

    (hold,) = status.backlog["waits_for"]
    assert hold["limit"] == "burst" and 0 < hold["seconds"] <= 2.1
    assert "normal pacing" in hold["detail"]
    assert not [p for p in status.problems if "not stuck" in p]
