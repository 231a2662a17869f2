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
