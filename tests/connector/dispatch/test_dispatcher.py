"""The dispatcher on a real database and the in-process limiter: each tenant within its
budget, tenants alternating on the queue, lost releases released again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from connector.diagnostics.backlog import absent_tenants
from connector.diagnostics.headroom import PIPEDRIVE, tenant_limits
from connector.dispatch.dispatcher import MAX_RELEASES, OWNER_KEY, Dispatcher, message, messages
from connector.errors import BrokerUnavailableError
from connector.jobs import SYNC_RECORDS
from connector.pipedrive.client import rate_limit_key
from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, SKIPPED, Attempt, AuditLog
from connector.storage.models import AuditRecord
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.work_items import ReleasedItem, WorkItems
from connector.tenants import parse_tenants
from tests.connector.webhooks.support import tenant_body, unique_tenant

SYNC_ORDER = "ml_connector.sync_order"


class Queue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, job: str, kwargs: dict[str, Any]) -> None:
        self.sent.append((job, kwargs))

    def tenants(self) -> list[str]:
        """The tenant of each record sent, a batch's records one by one."""
        return [record["tenant"] for _, record in _records(self.sent)]


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


def _attempts(runtime: Runtime, tenant: str, count: int, requests: int) -> None:
    """`count` finished attempts of `tenant` that took `requests` Pipedrive requests each."""
    audit = AuditLog(runtime.database)
    for i in range(count):
        audit.write(
            Attempt(
                tenant=tenant,
                direction=IFS_TO_PIPEDRIVE,
                entity="order",
                record_key=f"done-{i}",
                response_summary={"requests": {"ifs": 0, "pipedrive": requests}},
            )
        )


def test_a_tenant_whose_records_take_three_requests_gets_a_third_as_many(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, _, fast = deployment
    # Orders whose customers are new: search, create the organization, create the deal.
    _attempts(runtime, fast, 12, requests=3)
    _plan(runtime, fast, 50)
    queue = Queue()

    Dispatcher(runtime, queue).tick()

    # 20 requests per window: 6 records of 3, not 20 records sharing 20 requests.
    assert queue.tenants() == [fast] * 6


def test_a_tenant_paused_after_a_block_page_releases_nothing(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, slow, fast = deployment
    _plan(runtime, slow, 5)
    _plan(runtime, fast, 5)
    runtime.coordination.limiter.pause(rate_limit_key(fast), 60)
    queue = Queue()

    done = Dispatcher(runtime, queue).tick()

    assert queue.tenants() == [slow] * 4 and done.passed_over == 1
    assert WorkItems(runtime.database).backlog(fast) == (5, 0)


def _serving(postgres_url: str, tenants: list[str], **settings: Any) -> Runtime:
    bodies = {tenant: tenant_body() for tenant in tenants}
    return Runtime(
        Settings(database_url=postgres_url, redis_url=None, **settings),
        tenants=parse_tenants({"tenants": bodies}),
    )


def _served_once(postgres_url: str, tenant: str) -> None:
    """A tick of this deployment while it served `tenant` (paused: nothing released)."""
    serving = _serving(postgres_url, [tenant])
    try:
        serving.coordination.limiter.pause(rate_limit_key(tenant), 60)
        Dispatcher(serving, Queue()).tick()
    finally:
        serving.close()


def test_records_of_a_tenant_gone_from_the_file_are_kept_and_come_back_with_it(
    deployment: tuple[Runtime, str, str], postgres_url: str
) -> None:
    runtime, slow, fast = deployment
    typo = unique_tenant("typo")
    _plan(runtime, typo, 3)
    _served_once(postgres_url, typo)
    # Its id mistyped in the file: kept, its absence noted, listed with when it would go.
    without = _serving(postgres_url, [slow, fast])
    try:
        queue = Queue()
        Dispatcher(without, queue).tick()
        assert queue.sent == [] and WorkItems(runtime.database).backlog(typo) == (3, 0)
        (absent,) = [each for each in absent_tenants(without, {slow, fast}) if each.tenant == typo]
        assert absent.waiting == 3 and absent.absent_since is not None
        assert absent.dropped_at is not None and absent.dropped_at > absent.absent_since
    finally:
        without.close()
    # The file fixed: its records go out, and its absence is forgotten.
    back = _serving(postgres_url, [typo])
    try:
        Dispatcher(back, queue).tick()
        assert queue.tenants() == [typo] * 3
        note = DatabaseTenantState(back.database).get(typo, OWNER_KEY)
        assert note is not None and "absent_since" not in note
    finally:
        WorkItems(back.database).forget(typo)
        back.close()


def test_records_of_a_tenant_absent_past_the_grace_are_dropped_with_an_audit_row(
    deployment: tuple[Runtime, str, str], postgres_url: str
) -> None:
    runtime, slow, fast = deployment
    gone, theirs = unique_tenant("gone"), unique_tenant("theirs")
    _plan(runtime, gone, 4)
    _plan(runtime, theirs, 2)  # another deployment's tenant on the same database
    _served_once(postgres_url, gone)
    # A grace of about a millisecond.
    without = _serving(postgres_url, [slow, fast], absent_tenant_backlog_days=1e-8)
    try:
        dispatcher = Dispatcher(without, Queue())
        assert dispatcher.tick().absent_dropped == 0  # noted, kept
        dispatcher._last_absent = 0.0  # the next look, a minute later
        assert dispatcher.tick().absent_dropped == 4
    finally:
        without.close()
    assert WorkItems(runtime.database).backlog(gone) == (0, 0)
    with runtime.database.session() as session:
        row = session.scalars(select(AuditRecord).where(AuditRecord.tenant == gone)).one()
    assert (row.operation, row.status) == ("drop_backlog", SKIPPED)
    assert row.error is not None and row.error.startswith("4 stored record(s) dropped")
    assert DatabaseTenantState(runtime.database).get(gone, OWNER_KEY) is None
    # Never served here: never dropped here.
    assert WorkItems(runtime.database).backlog(theirs) == (2, 0)
    WorkItems(runtime.database).forget(theirs)


def _records(sent: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each record of the messages sent, a batch's records one by one."""
    return [
        (record["job"], record) if job == SYNC_RECORDS else (job, kwargs)
        for job, kwargs in sent
        for record in (kwargs["records"] if job == SYNC_RECORDS else [kwargs])
    ]


def test_a_tenants_release_goes_out_in_batches_spread_over_messages_that_alternate(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, slow, fast = deployment
    _plan(runtime, slow, 50)
    _plan(runtime, fast, 6)
    queue = Queue()

    Dispatcher(runtime, queue).tick()

    # The slow tenant's budget takes 4: one per message, so that 4 workers can share them;
    # the fast tenant's 6 go in 2s (at least SPREAD messages); the messages alternate.
    shapes = [(kwargs["tenant"], len(kwargs.get("records", [kwargs]))) for _, kwargs in queue.sent]
    assert shapes in (
        [(slow, 1), (fast, 2)] * 3 + [(slow, 1)],
        [(fast, 2), (slow, 1)] * 3 + [(slow, 1)],
    )
    for job, kwargs in queue.sent:
        if kwargs["tenant"] == fast:
            assert job == SYNC_RECORDS
    records = _records(queue.sent)
    assert all(job == SYNC_ORDER and record["attempt"] == 1 for job, record in records)
    items = [record["work_item"] for _, record in records]
    assert len(set(items)) == len(items) == 10
    assert WorkItems(runtime.database).backlog(fast) == (0, 6)


def test_messages_hold_at_most_the_batch_size_and_at_least_spread_messages_go_out() -> None:
    def released(count: int, tenant: str = "a") -> list[ReleasedItem]:
        return [ReleasedItem(i, tenant, "order", f"O{i}", SYNC_ORDER, {}, 0) for i in range(count)]

    assert [len(batch) for batch in messages(released(95), 10)] == [10] * 9 + [5]
    assert [len(batch) for batch in messages(released(3), 10)] == [1, 1, 1]
    assert [len(batch) for batch in messages(released(9), 10)] == [3, 3, 3]
    assert [len(batch) for batch in messages(released(40), 1)] == [1] * 40
    both = messages(released(8, "a") + released(2, "b"), 10)
    assert [(batch[0].tenant, len(batch)) for batch in both] == [
        ("a", 2),
        ("b", 1),
        ("a", 2),
        ("b", 1),
        ("a", 2),
        ("a", 2),
    ]
    assert message(released(1)[:1]) == (SYNC_ORDER, {"work_item": 0, "attempt": 1})


def test_the_records_of_messages_the_broker_did_not_take_are_put_back(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, _, fast = deployment
    _plan(runtime, fast, 8)
    sent: list[dict[str, Any]] = []

    def broker_down_after_one(job: str, kwargs: dict[str, Any]) -> None:
        if sent:
            raise BrokerUnavailableError("the broker does not answer")
        sent.append(kwargs)

    done = Dispatcher(runtime, broker_down_after_one).tick()

    assert done.released == len(sent[0]["records"]) == 2
    # The message whose publish raised may have reached the broker: its 2 records stay
    # released (for the stale sweep, as a later attempt); the 4 after it are put back.
    assert WorkItems(runtime.database).backlog(fast) == (4, 4)


def test_a_message_whose_publish_raised_comes_back_as_a_later_attempt(
    deployment: tuple[Runtime, str, str],
) -> None:
    runtime, _, fast = deployment
    _plan(runtime, fast, 2)
    failed = []

    def refuse(job: str, kwargs: dict[str, Any]) -> None:
        failed.append(kwargs)
        raise BrokerUnavailableError("the broker does not answer")

    Dispatcher(runtime, refuse, in_flight_cap=1).tick()
    assert [kwargs["attempt"] for kwargs in failed] == [1]

    sent: list[dict[str, Any]] = []
    sweeping = Dispatcher(runtime, lambda job, kwargs: sent.append(kwargs), stale_after_s=0)
    sweeping.tick()
    attempts = sorted(
        record.get("attempt", 0) for kwargs in sent for record in kwargs.get("records", [kwargs])
    )
    # The record of the failed publish goes out again with attempt 2 (its create searches
    # first); the record that was never sent is still a first attempt.
    assert attempts == [1, 2]
