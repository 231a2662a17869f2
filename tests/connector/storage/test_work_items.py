"""The work items store: a plan's records held per tenant, released, given back, swept."""

from __future__ import annotations

from datetime import timedelta

from connector.storage.database import Database
from connector.storage.models import utcnow
from connector.storage.work_items import WorkItems


def _page(tenant: str, keys: list[str], run_id: str = "run1") -> list[dict[str, object]]:
    return [
        {
            "entity": "order",
            "tenant": tenant,
            "key": key,
            "snapshot": {"etag": "e"},
            "run_id": run_id,
        }
        for key in keys
    ]


def test_a_page_is_stored_once_per_run_and_released_oldest_first(database: Database, tenant: str):
    items = WorkItems(database)
    items.add(tenant, f"{tenant}-r", "ml_connector.sync_order", _page(tenant, ["1", "2", "3"]))
    # The plan retried after a transient error stores the same records again: kept once.
    items.add(tenant, f"{tenant}-r", "ml_connector.sync_order", _page(tenant, ["2", "3", "4"]))
    assert items.backlog(tenant) == (4, 0)
    assert tenant in items.waiting_tenants()

    released = items.release({tenant: 2})[tenant]

    assert [item.record_key for item in released] == ["1", "2"]
    assert released[0].job == "ml_connector.sync_order"
    assert released[0].kwargs == {
        "tenant": tenant,
        "key": "1",
        "snapshot": {"etag": "e"},
        "run_id": "run1",
    }
    assert items.backlog(tenant) == (2, 2)
    assert items.in_flight()[tenant] == 2
    # Released items are not released twice.
    assert [i.record_key for i in items.release({tenant: 10})[tenant]] == ["3", "4"]
    assert items.release({tenant: 10}) == {}
    items.forget(tenant)


def test_finish_removes_and_give_back_waits_until_due(database: Database, tenant: str):
    items = WorkItems(database)
    items.add(tenant, f"{tenant}-r", "job", _page(tenant, ["1", "2"]))
    first, second = items.release({tenant: 2})[tenant]

    items.finish(first.id)
    items.give_back(second.id, not_before=utcnow() + timedelta(hours=1), attempts=1)

    assert items.backlog(tenant) == (1, 0)
    assert items.release({tenant: 5}) == {}  # not due yet
    items.give_back(second.id, not_before=utcnow() - timedelta(seconds=1), attempts=2)
    (again,) = items.release({tenant: 5})[tenant]
    assert (again.record_key, again.attempts) == ("2", 2)
    items.forget(tenant)


def test_stale_releases_come_back_and_an_item_that_never_ends_is_dropped(
    database: Database, tenant: str
):
    items = WorkItems(database)
    items.add(tenant, f"{tenant}-r", "job", _page(tenant, ["1", "2"]))
    _one, two = items.release({tenant: 2})[tenant]
    items.give_back(two.id, not_before=utcnow(), attempts=4)
    items.release({tenant: 2})

    dropped, swept = items.sweep_stale(utcnow() - timedelta(hours=1), max_attempts=5)
    assert (dropped, swept) == ([], 0)  # released just now: in flight, not lost

    dropped, swept = items.sweep_stale(utcnow() + timedelta(seconds=1), max_attempts=5)

    assert [item.record_key for item in dropped] == ["2"]  # its fifth release never ended
    assert swept == 1  # the sweep is the deployment's: the other tests left nothing released
    (back,) = items.release({tenant: 5})[tenant]
    assert (back.record_key, back.attempts) == ("1", 1)
    assert items.forget(tenant) == 1
    assert items.backlog(tenant) == (0, 0)


def test_tried_before_names_items_of_the_record_released_now_or_before(
    database: Database, tenant: str
):
    items = WorkItems(database)

    def tried(key: str, mine: int | None = None, mine_too: bool = False):
        return items.tried_before(tenant, "order", key, mine=mine, mine_too=mine_too)

    items.add(tenant, f"{tenant}-a", "ml_connector.sync_order", _page(tenant, ["1", "2"]))
    assert tried("1") is None  # stored, never released: no attempt can have run
    [first] = items.release({tenant: 1})[tenant]
    assert first.record_key == "1"

    # Released and unfinished: another attempt of the record asks, and meets it.
    assert tried("1") is not None
    # Its own attempt does not count it, unless its message says it may not be the first.
    assert tried("1", mine=first.id) is None
    assert tried("1", mine=first.id, mine_too=True) is not None
    # Put back by the sweep of stale releases (waiting again, an attempt more): still tried.
    items.sweep_stale(utcnow() + timedelta(seconds=1), max_attempts=10)
    assert items.backlog(tenant) == (2, 0)
    assert tried("1") is not None
    assert tried("2") is None
    # Another run's item of the same record: the earlier one is the answer.
    items.add(tenant, f"{tenant}-b", "ml_connector.sync_order", _page(tenant, ["1"]))
    oldest = tried("1")
    assert oldest is not None and oldest <= utcnow()
    # Finished: no trace left.
    items.finish(first.id)
    assert tried("1") is None
