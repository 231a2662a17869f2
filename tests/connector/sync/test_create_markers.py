"""A create never duplicates a record whose earlier attempt died between its POST and its
bookkeeping, and a record the dispatcher released commits no intent before its POST: each
way back to a second attempt carries a marker (its message, or a stored work item) that
makes the attempt look in Pipedrive first.

The death is a fault injected in-process right after the POST (the attempt writes nothing
after it, as when kill -9 hits there); Pipedrive's search index lags a minute behind writes,
as the real one may, so only a listing of records updated since the marker finds the record.
tests/workers/test_recovery_flow.py runs the real kill -9 on Redis and RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from connector.errors import RemoteError, TransientError
from connector.ratelimit import RateLimited
from connector.storage.idmap import CUSTOMER, ORDER, IdMap
from connector.storage.work_items import ReleasedItem, WorkItems
from connector.sync import JOB_FOR_ENTITY
from connector.sync.engine import ABSENT, Outcome, TenantSync, WorkItem
from sandbox.stack import Stack

pytestmark = pytest.mark.integration


class Killed(BaseException):
    """The attempt's process died here: nothing after it runs (not an error it could catch)."""


@contextmanager
def killed_after_post(sync: TenantSync, resource: str = "organizations") -> Iterator[None]:
    """Every create of `resource` reaches Pipedrive, then the attempt dies."""
    real = sync.pipedrive.create

    def create(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        created = real(kind, payload)
        if kind == resource:
            raise Killed(kind)
        return created

    sync.pipedrive.create = create  # type: ignore[method-assign]
    try:
        yield
    finally:
        sync.pipedrive.create = real  # type: ignore[method-assign]


def _stack(stack_factory: Callable[..., Stack], customers: int = 1, orders: int = 0) -> Stack:
    stack = stack_factory()
    stack.ifs.seed(customers=customers, orders=orders, seed=41)
    # Search sees a new record only a minute later (listing sees it at once).
    stack.pipedrive.configure({"search_lag_s": 60})
    return stack


def _release(sync: TenantSync, entity: str, run_id: str, items: list[WorkItem]) -> ReleasedItem:
    """Store the items as the plan does and release them as the dispatcher does; the first."""
    work_items = WorkItems(sync.runtime.database)
    tenant = sync.tenant.id
    found = [{"entity": entity, "tenant": tenant, "key": item.key} for item in items]
    work_items.add(tenant, run_id, JOB_FOR_ENTITY[entity], found)
    released = work_items.release({tenant: len(found)})[tenant]
    return released[0]


def _attempt(sync: TenantSync, item: WorkItem, released: ReleasedItem, **options: Any) -> Outcome:
    """The record's task as a worker runs it: hint ABSENT (the plan's index read did not
    hold it), the stored item, its attempt number unless given."""
    options.setdefault("attempt", released.attempts + 1)
    result = sync.sync_record(
        item.entity,
        item.key,
        snapshot=item.snapshot,
        hint=ABSENT,
        run_id=released.kwargs.get("run_id") or "run",
        work_item=released.id,
        **options,
    )
    return result.outcome


def _crash_first_attempt(sync: TenantSync, item: WorkItem, run_id: str) -> ReleasedItem:
    released = _release(sync, item.entity, run_id, [item])
    with killed_after_post(sync), pytest.raises(Killed):
        _attempt(sync, item, released)
    return released


def _organizations(stack: Stack) -> list[int]:
    return [record["id"] for record in stack.pipedrive.all_records("organization")]


def test_a_released_record_commits_no_intent_and_its_crash_leaves_its_item_released(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items

    _crash_first_attempt(sync, item, "run-a")

    # The trace of the crash is the work item, released and unfinished, and no id-map row.
    assert IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, item.key) is None
    assert WorkItems(stack.runtime.database).backlog(stack.tenant) == (0, 1)
    assert len(_organizations(stack)) == 1


@pytest.mark.parametrize("how", ["re-released", "given back", "redelivered"])
def test_the_next_attempt_of_a_crashed_item_adopts_what_it_created(
    stack_factory: Callable[..., Stack], how: str
) -> None:
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    released = _crash_first_attempt(sync, item, "run-a")
    [landed] = _organizations(stack)
    items = WorkItems(stack.runtime.database)

    if how == "re-released":
        # The dispatcher's sweep of stale releases puts it back as an attempt more.
        items.sweep_stale(_far_future(), max_attempts=10)
        [again] = items.release({stack.tenant: 1})[stack.tenant]
        assert again.attempts == 1
        outcome = _attempt(sync, item, again)
    elif how == "given back":
        # A transient ending after the POST (a Postgres outage under the bookkeeping): the
        # task gives the item back as an attempt more (RecordSyncTask.retry_transient).
        items.give_back(released.id, not_before=_far_future() - timedelta(days=2), attempts=1)
        [again] = items.release({stack.tenant: 1})[stack.tenant]
        outcome = _attempt(sync, item, again)
    else:
        # The broker delivers the same message again (RabbitMQ, or kombu's Redis restore).
        outcome = _attempt(sync, item, released, redelivered=True)

    assert outcome is not Outcome.CREATED
    assert _organizations(stack) == [landed]
    entry = IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, item.key)
    assert entry is not None and entry.pipedrive_id == landed
    assert items.backlog(stack.tenant) == (0, 0)


def test_another_runs_first_attempt_adopts_what_a_crashed_attempt_created(
    stack_factory: Callable[..., Stack],
) -> None:
    # A new plan stored the record again while the crashed item waits for its re-release:
    # its own first attempt has no marker, but the other run's item is one.
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    _crash_first_attempt(sync, item, "run-a")
    [landed] = _organizations(stack)
    later = _release(sync, CUSTOMER, "run-b", [item])
    assert later.attempts == 0

    assert _attempt(sync, item, later) is not Outcome.CREATED
    assert _organizations(stack) == [landed]


def test_without_a_marker_the_same_crash_would_duplicate_the_record(
    stack_factory: Callable[..., Stack],
) -> None:
    # The control for the tests above: the crashed item gone (nothing says an attempt ran)
    # and a first attempt creates again. The markers are what prevents it.
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    crashed = _crash_first_attempt(sync, item, "run-a")
    WorkItems(stack.runtime.database).finish(crashed.id)
    later = _release(sync, CUSTOMER, "run-b", [item])

    assert _attempt(sync, item, later) is Outcome.CREATED
    assert len(_organizations(stack)) == 2


def test_an_attempt_unsure_of_its_post_leaves_the_intent_for_any_later_attempt(
    stack_factory: Callable[..., Stack],
) -> None:
    # The POST created the record but its answer was a 503: the attempt ends retrying and
    # its row comes with the intent, so even another run's first attempt searches.
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    released = _release(sync, CUSTOMER, "run-a", [item])
    real = sync.pipedrive.create

    def answered_503(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        real(kind, payload)
        raise RemoteError("pipedrive", "POST organizations: 503", status=503, retryable=True)

    sync.pipedrive.create = answered_503  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="503"):
            _attempt(sync, item, released)
    finally:
        sync.pipedrive.create = real  # type: ignore[method-assign]
    [landed] = _organizations(stack)
    entry = IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, item.key)
    assert entry is not None and entry.pipedrive_id is None  # the intent
    items = WorkItems(stack.runtime.database)
    items.finish(released.id)  # even with its item gone (retries given up)
    later = _release(sync, CUSTOMER, "run-b", [item])

    assert _attempt(sync, item, later) is not Outcome.CREATED
    assert _organizations(stack) == [landed]


def test_a_create_our_own_limiter_refused_leaves_no_intent(
    stack_factory: Callable[..., Stack],
) -> None:
    # No tokens for the POST: nothing was sent, so the item goes back as the same attempt
    # (RecordSyncTask) and its next run creates without a search.
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    released = _release(sync, CUSTOMER, "run-a", [item])
    real = sync.pipedrive.create

    def refused(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise RateLimited("pipedrive:burst", 0.5)

    sync.pipedrive.create = refused  # type: ignore[method-assign]
    try:
        with pytest.raises(TransientError):
            _attempt(sync, item, released)
    finally:
        sync.pipedrive.create = real  # type: ignore[method-assign]

    assert IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, item.key) is None
    assert _organizations(stack) == []


def test_a_record_synced_without_a_work_item_keeps_its_intent_commit(
    stack_factory: Callable[..., Stack],
) -> None:
    # CLI syncs, replays and relinks run a record with no stored item: nothing else would
    # tell the next attempt, so the intent is committed before the POST, as before.
    stack = _stack(stack_factory)
    sync = TenantSync(stack.runtime, stack.tenant)
    [item] = sync.plan(CUSTOMER).items
    with killed_after_post(sync), pytest.raises(Killed):
        sync.sync_record(CUSTOMER, item.key, snapshot=item.snapshot, hint=ABSENT)
    [landed] = _organizations(stack)
    entry = IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, item.key)
    assert entry is not None and entry.pipedrive_id is None

    outcome = sync.sync_record(CUSTOMER, item.key, snapshot=item.snapshot, hint=ABSENT).outcome

    assert outcome is not Outcome.CREATED
    assert _organizations(stack) == [landed]


def test_a_parent_created_inline_by_a_crashed_order_is_adopted_by_its_own_item(
    stack_factory: Callable[..., Stack],
) -> None:
    # The order's attempt syncs its new customer first and dies after the customer's POST;
    # the customer's own item is a first delivery, without a marker: the parent's sync
    # (no item of its own) committed its intent, which is the one the customer's task meets.
    stack = _stack(stack_factory, customers=1, orders=1)
    sync = TenantSync(stack.runtime, stack.tenant)
    [customer] = sync.plan(CUSTOMER).items
    [order] = sync.plan(ORDER).items
    order_item = _release(sync, ORDER, "run-a", [order])
    with killed_after_post(sync, "organizations"), pytest.raises(Killed):
        _attempt(sync, order, order_item)
    [landed] = _organizations(stack)
    customer_item = _release(sync, CUSTOMER, "run-a", [customer])

    assert _attempt(sync, customer, customer_item) is not Outcome.CREATED
    assert _organizations(stack) == [landed]
    # And the order's re-release links its deal to that organization, once.
    items = WorkItems(stack.runtime.database)
    items.sweep_stale(_far_future(), max_attempts=10)
    [again] = items.release({stack.tenant: 1})[stack.tenant]
    assert _attempt(sync, order, again) is Outcome.CREATED
    [deal] = stack.pipedrive.all_records("deal")
    assert deal["org_id"] == landed
    assert _organizations(stack) == [landed]


def _far_future() -> Any:
    from connector.storage.models import utcnow

    return utcnow() + timedelta(days=1)
