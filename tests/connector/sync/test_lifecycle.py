"""Records' life in the sync engine without Celery: deals and organizations deleted or merged
by users, tombstones, field ownership on full runs, archived deals, lost POSTs under search lag."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from connector.errors import TransientError
from connector.storage.audit import FAILED, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER, IdMap
from connector.storage.models import AuditRecord
from connector.storage.story import record_story
from connector.sync import ENTITIES
from connector.sync.engine import Outcome, TenantSync
from connector.sync.specs import ORDERS
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from tests.connector.sync.support import run_sync

pytestmark = pytest.mark.integration


def _rows(stack: Stack, key: str | None = None) -> list[AuditRecord]:
    rows = AuditLog(stack.runtime.database).list(tenant=stack.tenant, limit=5000)
    return [row for row in rows if key is None or row.record_key == key]


def _live_deals_of(stack: Stack, sync: TenantSync, order_no: str) -> list[dict]:
    key = sync.layout().deal_fields["ifs_order_no"]
    return [
        d for d in stack.pipedrive.all_records("deal") if d["custom_fields"].get(key) == order_no
    ]


def _linked(stack: Stack, entity: str, key: str) -> int | None:
    entry = IdMap(stack.runtime.database).get(stack.tenant, entity, key)
    assert entry is not None
    return entry.pipedrive_id


@pytest.fixture
def synced(stack_factory: Callable[..., Stack]) -> Callable[..., tuple[Stack, TenantSync]]:
    def make(**overrides: object) -> tuple[Stack, TenantSync]:
        stack = stack_factory(tenant_overrides=overrides or None)
        stack.ifs.seed(customers=3, orders=6, seed=21)
        sync = TenantSync(stack.runtime, stack.tenant)
        run_sync(sync)
        return stack, sync

    return make


def test_recreate_a_deleted_deal_whose_order_changed_makes_one_new_deal_and_no_failed_row(
    synced,
) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[0]
    gone = _linked(stack, ORDER, order_no)
    stack.pipedrive.delete("deal", gone, "app", 1)
    stack.ifs.edit_order(order_no, Cf_Cost_Center="CC-AFTER-DELETE")

    outcomes = run_sync(sync)

    assert outcomes[ORDER] == [Outcome.CREATED]
    [deal] = _live_deals_of(stack, sync, order_no)
    assert deal["id"] != gone and _linked(stack, ORDER, order_no) == deal["id"]
    assert not [row for row in _rows(stack) if row.status == FAILED]
    newest = _rows(stack, order_no)[0]
    assert newest.operation == "create"
    assert newest.request_summary["lifecycle"]["change"] == "unlinked"


def test_a_full_sync_recreates_a_deal_deleted_without_any_ifs_change(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[1]
    gone = _linked(stack, ORDER, order_no)
    stack.pipedrive.delete("deal", gone, "app", 1)

    run_sync(sync, full=True)

    assert len(_live_deals_of(stack, sync, order_no)) == 1
    assert _linked(stack, ORDER, order_no) != gone
    assert not [row for row in _rows(stack) if row.status == FAILED]


def test_respect_tombstones_once_writes_nothing_and_relink_brings_it_back(synced) -> None:
    stack, sync = synced(lifecycle={"on_pipedrive_delete": "respect"})
    order_no = stack.ifs.keys(customer_order())[2]
    gone = _linked(stack, ORDER, order_no)
    stack.pipedrive.delete("deal", gone, "app", 1)
    stack.ifs.edit_order(order_no, Cf_Cost_Center="CC-IGNORED")
    deal_posts = stack.pipedrive.stats()["writes"]["deal"].get("POST", 0)

    first = run_sync(sync)
    run_sync(sync)
    run_sync(sync, full=True)

    assert first[ORDER] == [Outcome.UNCHANGED]
    assert _live_deals_of(stack, sync, order_no) == []
    assert stack.pipedrive.stats()["writes"]["deal"].get("POST", 0) == deal_posts
    [why] = _rows(stack, order_no)[:-1]  # the newest rows; the oldest is the first create
    assert why.operation == "tombstoned" and "respect" in (why.error or "")
    assert not [row for row in _rows(stack) if row.status == FAILED]

    IdMap(stack.runtime.database).relink(stack.tenant, ORDER, order_no, None)
    run_sync(sync)
    [deal] = _live_deals_of(stack, sync, order_no)
    assert _linked(stack, ORDER, order_no) == deal["id"]


def test_a_merged_organization_is_relinked_to_its_survivor_never_duplicated(synced) -> None:
    stack, sync = synced()
    customer = sorted(stack.ifs.keys(stack.ifs.customer_type))[0]
    merged = _linked(stack, CUSTOMER, customer)
    assert merged is not None
    # A sales user made a duplicate by hand, then merged the connector's organization into it.
    survivor = stack.pipedrive.create("organization", {"name": "ACME (hand-made)"}, "app", 1)
    stack.pipedrive.merge("organization", merged, survivor["id"], "app", 1)
    stack.ifs.edit_customer(customer, Name="Renamed after merge")

    run_sync(sync, full=True)

    key = sync.layout().organization_fields["ifs_customer_id"]
    per_customer = Counter(
        o["custom_fields"].get(key) for o in stack.pipedrive.all_records("organization")
    )
    assert set(per_customer.values()) == {1} and len(per_customer) == 3
    assert _linked(stack, CUSTOMER, customer) == survivor["id"]
    assert stack.pipedrive.get("organization", survivor["id"])["name"] == "Renamed after merge"
    deals = stack.pipedrive.all_records("deal")
    orders = {o: stack.ifs.get_order(o)["CustomerNo"] for o in stack.ifs.keys(customer_order())}
    deal_key = sync.layout().deal_fields["ifs_order_no"]
    for deal in deals:
        if orders[deal["custom_fields"][deal_key]] == customer:
            assert deal["org_id"] == survivor["id"]
    assert not [row for row in _rows(stack) if row.status == FAILED]


def test_a_merged_deal_is_relinked_to_the_survivor(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[3]
    merged = _linked(stack, ORDER, order_no)
    org = stack.pipedrive.get("deal", merged)["org_id"]
    survivor = stack.pipedrive.create("deal", {"title": "hand-made", "org_id": org}, "app", 1)
    stack.pipedrive.merge("deal", merged, survivor["id"], "app", 1)

    run_sync(sync, full=True)

    [deal] = _live_deals_of(stack, sync, order_no)
    assert deal["id"] == survivor["id"] == _linked(stack, ORDER, order_no)
    assert not [row for row in _rows(stack) if row.status == FAILED]


def test_a_won_deal_whose_order_did_not_change_stays_won_through_a_full_sync(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[4]
    deal_id = _linked(stack, ORDER, order_no)
    stack.pipedrive.move_deal(deal_id, status="won")
    stack.ifs.edit_order(order_no, Cf_Profit_Center="PC-CHANGED")  # a connector-owned value

    run_sync(sync, full=True)

    deal = stack.pipedrive.get("deal", deal_id)
    assert deal["status"] == "won"
    assert deal["custom_fields"][sync.layout().deal_fields["profit_center"]] == "PC-CHANGED"


def test_an_ifs_state_change_still_moves_a_deal_a_user_moved(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[5]
    deal_id = _linked(stack, ORDER, order_no)
    stack.pipedrive.move_deal(deal_id, status="won")
    stack.ifs.edit_order(order_no, Objstate="Cancelled")

    run_sync(sync, full=True)

    assert stack.pipedrive.get("deal", deal_id)["status"] == "lost"


def test_archived_deals_are_present_for_the_bulk_index(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[0]
    deal_id = _linked(stack, ORDER, order_no)
    stack.pipedrive.set_archived(deal_id, True)
    stack.ifs.edit_order(order_no, Cf_Cost_Center="CC-ARCHIVED")

    assert sync.pipedrive_index(ORDERS)[order_no] == deal_id
    run_sync(sync, full=True)

    [deal] = [
        d
        for d in stack.pipedrive.all_records("deal")
        if d["custom_fields"].get(sync.layout().deal_fields["ifs_order_no"]) == order_no
    ]
    assert deal["id"] == deal_id and deal["is_archived"]
    assert deal["custom_fields"][sync.layout().deal_fields["cost_center"]] == "CC-ARCHIVED"
    newest = record_story(stack.runtime.database, stack.tenant, ORDER, order_no).chapters()[-1]
    assert newest.what == "update" and "the deal is archived" in newest.detail, newest


def test_lost_creates_are_adopted_by_listing_when_search_lags(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=6, orders=24, seed=8)
    sync = TenantSync(stack.runtime, stack.tenant)
    sync.layout()  # custom fields and pipeline first: the faults are for the records
    stack.pipedrive.configure({"search_lag_s": 600})
    stack.pipedrive.set_faults({"error_after_write_rate": 0.3, "seed": 5})

    for _ in range(6):  # the workers' retries, in this thread
        for entity in ENTITIES:
            for item in sync.plan(entity).items:
                try:
                    sync.sync_record(entity, item.key, snapshot=item.snapshot)
                except TransientError:  # a lost answer: the next round retries
                    continue

    layout = sync.layout()
    orgs = Counter(
        o["custom_fields"].get(layout.organization_fields["ifs_customer_id"])
        for o in stack.pipedrive.all_records("organization")
    )
    deals = Counter(
        d["custom_fields"].get(layout.deal_fields["ifs_order_no"])
        for d in stack.pipedrive.all_records("deal")
    )
    assert stack.pipedrive.stats()["injected_errors_500"] > 0
    assert len(orgs) == 6 and set(orgs.values()) == {1}, orgs
    assert len(deals) == 24 and set(deals.values()) == {1}, deals


def _with_open_deal(stack: Stack) -> str:
    return next(
        order_no
        for order_no in stack.ifs.keys(customer_order())
        if stack.pipedrive.get("deal", _linked(stack, ORDER, order_no))["status"] == "open"
    )


def _writes(stack: Stack, entity: str) -> int:
    return sum(stack.pipedrive.stats()["writes"][entity].values())


def test_an_order_gone_from_ifs_closes_its_deal_once_and_a_gone_customer_is_left_alone(
    synced,
) -> None:
    stack, sync = synced(
        lifecycle={"on_ifs_missing": "close", "ifs_missing_lost_reason": "Order removed in IFS"}
    )
    order_no = _with_open_deal(stack)
    deal_id = _linked(stack, ORDER, order_no)
    removed = stack.ifs.get_order(order_no)
    stack.ifs.remove(customer_order(), order_no)
    customer = sorted(stack.ifs.keys(stack.ifs.customer_type))[-1]
    org_id = _linked(stack, CUSTOMER, customer)
    stack.ifs.remove(stack.ifs.customer_type, customer)

    outcomes = run_sync(sync)

    assert outcomes == {CUSTOMER: [Outcome.UNCHANGED], ORDER: [Outcome.UPDATED]}, outcomes
    deal = stack.pipedrive.get("deal", deal_id)
    assert (deal["status"], deal["lost_reason"]) == ("lost", "Order removed in IFS")
    assert stack.pipedrive.get("organization", org_id)["is_deleted"] is False
    [closed] = [row for row in _rows(stack, order_no) if row.operation == "close"]
    assert "on_ifs_missing is close" in closed.response_summary["reason"]
    [left] = [row for row in _rows(stack, customer) if row.operation == "ifs_missing"]
    assert "organization left" in (left.error or "")
    writes = (_writes(stack, "deal"), _writes(stack, "organization"))

    assert run_sync(sync) == {CUSTOMER: [], ORDER: []}  # handled once, never queued again
    assert (_writes(stack, "deal"), _writes(stack, "organization")) == writes

    # Back in IFS (a read glitch, or restored): the deal follows IFS again.
    envelope = ("luname", "keyref", "Objgrants")
    properties = customer_order().properties
    stack.ifs.insert_order(
        {k: v for k, v in removed.items() if k in properties and k not in envelope}
    )
    assert run_sync(sync)[ORDER] == [Outcome.UPDATED]
    assert stack.pipedrive.get("deal", deal_id)["status"] == "open"
    assert IdMap(stack.runtime.database).get(stack.tenant, ORDER, order_no).ifs_missing_at is None
    assert not [row for row in _rows(stack) if row.status == FAILED]


def test_an_order_gone_from_ifs_is_ignored_by_default_nothing_written(synced) -> None:
    stack, sync = synced()
    order_no = _with_open_deal(stack)
    deal_id = _linked(stack, ORDER, order_no)
    stack.ifs.remove(customer_order(), order_no)
    writes = _writes(stack, "deal")

    assert run_sync(sync)[ORDER] == [Outcome.UNCHANGED]
    assert run_sync(sync)[ORDER] == []

    assert _writes(stack, "deal") == writes
    assert stack.pipedrive.get("deal", deal_id)["status"] == "open"
    [why] = [row for row in _rows(stack, order_no) if row.operation == "ifs_missing"]
    assert why.status == "skipped" and "on_ifs_missing is ignore" in (why.error or "")
    assert not [row for row in _rows(stack) if row.status == FAILED]


def test_an_order_moved_to_another_customer_moves_its_deal(synced) -> None:
    stack, sync = synced()
    order_no = stack.ifs.keys(customer_order())[2]
    deal_id = _linked(stack, ORDER, order_no)
    before = stack.ifs.get_order(order_no)["CustomerNo"]
    other = next(c for c in sorted(stack.ifs.keys(stack.ifs.customer_type)) if c != before)
    stack.ifs.edit_order(order_no, CustomerNo=other)

    assert run_sync(sync)[ORDER] == [Outcome.UPDATED]

    [deal] = _live_deals_of(stack, sync, order_no)
    assert deal["id"] == deal_id and deal["org_id"] == _linked(stack, CUSTOMER, other)
