"""The dispatcher on a real database and the in-process limiter: each tenant within its
budget, tenants alternating on the queue, lost releases released again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from connector.diagnostics.headroom import PIPEDRIVE, tenant_limits
from connector.dispatch.dispatcher import MAX_RELEASES, Dispatcher
from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.audit import FAILED
from connector.storage.models import AuditRecord
from connector.storage.work_items import WorkItems
from connector.tenants import parse_tenants
from tests.connector.webhooks.support import tenant_body, unique_tenant

SYNC_ORDER = "ml_connector.sync_order"


class Queue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, job: str, kwargs: dict[str, Any]) -> None:
        self.sent.append((job, kwargs))

    def tenants(self) -> list[str]:
        return [kwargs["tenant"] for _, kwargs in self.sent]


@pytest.fixture
def deployment(postgres_url: str) -> Iterator[tuple[Runtime, str, str]]:
    slow, fast = unique_tenant("slow"), unique_tenant("fast")
    bodies = {
        slow: {**tenant_body(), "pipedrive": {**tenant_body()["pipedrive"], "burst_limit": 4}},
        fast: tenant_body(),  # 20 per 2 s, the default plan
    }
    settings = Settings(database_url=postgres_url, redis_url=None, dispatch_in_flight=30)
    runtime = Runtime(settings, tenants=parse_tenants({"tenants": bodies}))
    yield runtime, slow, fast
    items = WorkItems(runtime.database)
    items.forget(slow)
    items.forget(fast)
    runtime.close()


def _plan(runtime: Runtime, tenant: str, count: int) -> None:
    page = [
        {"entity": "order", "tenant": tenant, "key": f"O{i}", "run_id": "r"} for i in range(count)
    ]
    WorkItems(runtime.database).add(tenant, f"{tenant}-run", SYNC_ORDER, page)


def test_each_tenant_gets_what_its_budget_takes_and_the_queue_alternates(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, slow, fast = deployment
    _plan(runtime, slow, 50)
    _plan(runtime, fast, 6)
    queue = Queue()
    # One message per record: what this proves is the alternation of records.
    dispatcher = Dispatcher(runtime, queue, batch_size=1)

    dispatcher.tick()

    assert sorted(queue.tenants()) == sorted([slow] * 4 + [fast] * 6)
    assert queue.tenants()[:8] in ([slow, fast] * 4, [fast, slow] * 4)
    job, kwargs = queue.sent[0]
    assert job == SYNC_ORDER and kwargs["attempt"] == 1 and "work_item" in kwargs

    # The slow tenant's four are on their way: its budget takes no more, whatever it waits with.
    dispatcher.tick()
    assert len(queue.sent) == 10

    # Its workers spend the window and finish: nothing more goes out until tokens are back.
    limiter = runtime.coordination.limiter
    key, limits = tenant_limits(runtime.tenant(slow), PIPEDRIVE)
    for _ in range(4):
        assert limiter.try_acquire(key, 5, limits) == 0.0
    items = WorkItems(runtime.database)
    for _, kwargs in queue.sent:
        if kwargs["tenant"] == slow:
            items.finish(kwargs["work_item"])
    dispatcher.tick()
    assert len(queue.sent) == 10
    assert items.backlog(slow) == (46, 0)


def test_releases_that_never_finish_are_released_again_then_given_up_with_a_failed_row(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, _, fast = deployment
    _plan(runtime, fast, 1)
    queue = Queue()
    dispatcher = Dispatcher(runtime, queue, stale_after_s=0.0)

    for _ in range(MAX_RELEASES + 1):
        dispatcher._last_sweep = 0.0  # sweep at every tick
        dispatcher.tick()

    # Released, lost, released again: each time a new attempt, until it is given up.
    assert [kwargs["attempt"] for _, kwargs in queue.sent] == list(range(1, MAX_RELEASES + 1))
    assert WorkItems(runtime.database).backlog(fast) == (0, 0)
    with runtime.database.session() as session:
        row = session.scalars(select(AuditRecord).where(AuditRecord.tenant == fast)).one()
    assert (row.status, row.record_key, row.correlation_id) == (FAILED, "O0", "r")
    assert row.error is not None and "never finished" in row.error
    assert row.replay_args == {"tenant": fast, "key": "O0"}
