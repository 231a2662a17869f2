"""The sync engine without Celery: TenantSync against both simulators over real HTTP, with
Postgres and Redis (plan, upsert, re-sync, renamed key properties, lost POSTs, retries)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from connector.errors import TransientError
from connector.storage.audit import FAILED, RETRYING, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER, IdMap
from connector.storage.models import AuditRecord
from connector.sync import ENTITIES, JOB_FOR_ENTITY
from connector.sync.engine import Outcome, TenantSync
from connector.sync.mapping import map_customer
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from tests.connector.sync.support import run_sync

pytestmark = pytest.mark.integration


def _writes(stack: Stack) -> int:
    writes = stack.pipedrive.stats()["writes"]
    return sum(
        count
        for entity in ("organization", "deal", "organizations", "deals")
        for method, count in writes.get(entity, {}).items()
        if method in ("POST", "PATCH", "DELETE", "create", "update", "delete")
    )


def _rows(stack: Stack) -> list[AuditRecord]:
    return AuditLog(stack.runtime.database).list(tenant=stack.tenant, limit=1000)


def test_jobs_are_named_per_entity_customers_first() -> None:
    assert ENTITIES == (CUSTOMER, ORDER)
    assert JOB_FOR_ENTITY == {
        CUSTOMER: "ml_connector.sync_customer",
        ORDER: "ml_connector.sync_order",
    }


def test_plan_and_upsert_create_one_organization_and_one_deal_each(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=4, orders=9, seed=3)
    sync = TenantSync(stack.runtime, stack.tenant)

    outcomes = run_sync(sync)

    assert outcomes[CUSTOMER] == [Outcome.CREATED] * 4
    assert outcomes[ORDER] == [Outcome.CREATED] * 9
    layout = sync.layout()
    organizations = stack.pipedrive.all_records("organization")
    deals = stack.pipedrive.all_records("deal")
    org_key = layout.organization_fields["ifs_customer_id"]
    deal_key = layout.deal_fields["ifs_order_no"]
    assert sorted(o["custom_fields"][org_key] for o in organizations) == sorted(
        stack.ifs.keys(stack.ifs.customer_type)
    )
    assert sorted(d["custom_fields"][deal_key] for d in deals) == sorted(
        stack.ifs.keys(customer_order())
    )
    idmap = IdMap(stack.runtime.database)
    by_customer = {o["custom_fields"][org_key]: o["id"] for o in organizations}
    for deal in deals:
        order = stack.ifs.get_order(deal["custom_fields"][deal_key])
        assert deal["org_id"] == by_customer[order["CustomerNo"]]
        entry = idmap.get(stack.tenant, ORDER, order["OrderNo"])
        assert entry is not None and entry.pipedrive_id == deal["id"]


def test_a_resync_writes_nothing(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=5)
    run_sync(TenantSync(stack.runtime, stack.tenant))
    writes = _writes(stack)
    assert writes == 9

    again = TenantSync(stack.runtime, stack.tenant)
    plans = {entity: again.plan(entity) for entity in ENTITIES}
    assert [plan.items for plan in plans.values()] == [[], []]
    assert [plan.unchanged for plan in plans.values()] == [3, 6]
    # A full run compares with what Pipedrive holds and still finds nothing to write.
    outcomes = run_sync(again, full=True)
    assert set(outcomes[CUSTOMER]) | set(outcomes[ORDER]) == {Outcome.UNCHANGED}
    assert _writes(stack) == writes


def test_a_changed_ifs_record_is_updated_in_place(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=2, seed=9)
    sync = TenantSync(stack.runtime, stack.tenant)
    run_sync(sync)
    customer_id = sorted(stack.ifs.keys(stack.ifs.customer_type))[0]
    stack.ifs.edit_customer(customer_id, Name="Renamed Marine")

    outcomes = run_sync(sync)

    assert outcomes == {CUSTOMER: [Outcome.UPDATED], ORDER: []}
    entry = IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, customer_id)
    assert entry is not None and entry.pipedrive_id is not None
    assert stack.pipedrive.get("organization", entry.pipedrive_id)["name"] == "Renamed Marine"
    assert len(stack.pipedrive.all_records("organization")) == 2


def test_customers_keyed_by_a_renamed_property_sync_by_that_property(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(
        ifs_settings={"customer_key": "CustomerNo"},
        tenant_overrides={"customer_mapping": {"customer_id": "CustomerNo"}},
    )
    stack.ifs.seed(customers=3, orders=5, seed=11)
    customer_nos = sorted(stack.ifs.keys(stack.ifs.customer_type))
    assert all("CustomerId" not in stack.ifs.get_customer(no) for no in customer_nos)
    sync = TenantSync(stack.runtime, stack.tenant)

    outcomes = run_sync(sync)
    # Single reads address the customer by the same property.
    single = sync.sync_record(CUSTOMER, customer_nos[0], full=True)

    assert outcomes[CUSTOMER] == [Outcome.CREATED] * 3
    assert outcomes[ORDER] == [Outcome.CREATED] * 5
    assert single.outcome is Outcome.UNCHANGED
    org_key = sync.layout().organization_fields["ifs_customer_id"]
    organizations = stack.pipedrive.all_records("organization")
    assert sorted(o["custom_fields"][org_key] for o in organizations) == customer_nos
    by_customer = {o["custom_fields"][org_key]: o["id"] for o in organizations}
    deal_key = sync.layout().deal_fields["ifs_order_no"]
    for deal in stack.pipedrive.all_records("deal"):
        order = stack.ifs.get_order(deal["custom_fields"][deal_key])
        assert deal["org_id"] == by_customer[order["CustomerNo"]]


def test_an_order_whose_customer_is_new_syncs_the_customer_first(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=1, seed=13)
    order_no = stack.ifs.keys(customer_order())[0]
    sync = TenantSync(stack.runtime, stack.tenant)

    result = sync.sync_record(ORDER, order_no)

    assert result.outcome is Outcome.CREATED
    customer_no = stack.ifs.get_order(order_no)["CustomerNo"]
    entry = IdMap(stack.runtime.database).get(stack.tenant, CUSTOMER, customer_no)
    assert entry is not None and entry.pipedrive_id is not None
    [deal] = stack.pipedrive.all_records("deal")
    assert deal["org_id"] == entry.pipedrive_id
    assert [(row.entity, row.operation) for row in reversed(_rows(stack))] == [
        (CUSTOMER, "create"),
        (ORDER, "create"),
    ]


def test_a_create_whose_answer_was_lost_is_adopted_not_duplicated(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=1, orders=0, seed=17)
    [customer_id] = stack.ifs.keys(stack.ifs.customer_type)
    sync = TenantSync(stack.runtime, stack.tenant)
    plan = sync.plan(CUSTOMER)
    [item] = plan.items
    # An earlier attempt wrote its create intent, POSTed, and died before the bookkeeping.
    idmap = IdMap(stack.runtime.database)
    idmap.save(stack.tenant, CUSTOMER, customer_id, etag="")
    landed = sync.pipedrive.create(
        "organizations", map_customer(sync.tenant, item.data, sync.layout())
    )

    result = sync.sync_record(
        CUSTOMER, customer_id, snapshot={"etag": item.etag, "data": item.data}, hint=item.hint
    )

    assert result.outcome is not Outcome.CREATED
    assert [o["id"] for o in stack.pipedrive.all_records("organization")] == [landed["id"]]
    entry = idmap.get(stack.tenant, CUSTOMER, customer_id)
    assert entry is not None and entry.pipedrive_id == landed["id"]


def test_transient_failure_leaves_a_retrying_row_and_raises_with_its_id(
    stack_factory: Callable[..., Stack],
) -> None:
    # One IFS request a minute: the first record's read takes it, the next is rate limited.
    stack = stack_factory(tenant_overrides={"ifs": {"requests_per_minute": 1}})
    stack.ifs.seed(customers=3, orders=3, seed=19)
    sync = TenantSync(stack.runtime, stack.tenant)
    sync.layout()
    first = sorted(stack.ifs.keys(stack.ifs.customer_type))[0]
    assert sync.sync_record(CUSTOMER, first).outcome is Outcome.CREATED
    order_no = next(
        no
        for no in stack.ifs.keys(customer_order())
        if stack.ifs.get_order(no)["CustomerNo"] != first
    )
    order = stack.ifs.get_order(order_no)
    snapshot = {
        "etag": order["@odata.etag"],
        "data": {k: v for k, v in order.items() if k != "@odata.etag"},
    }

    # The order's customer is new: its nested sync needs IFS, which is out of budget.
    with pytest.raises(TransientError) as raised:
        sync.sync_record(ORDER, order_no, snapshot=snapshot, attempt=3)

    error = raised.value
    assert error.retry_after_s is not None and error.retry_after_s > 5
    audit = AuditLog(stack.runtime.database)
    row = audit.get(error.audit_id or 0)
    assert row is not None and (row.entity, row.record_key) == (ORDER, order_no)
    assert row.status == RETRYING and row.attempt == 3 and row.replay_task == JOB_FOR_ENTITY[ORDER]
    statuses = {(r.entity, r.record_key): r.status for r in _rows(stack)}
    assert statuses[(CUSTOMER, order["CustomerNo"])] == RETRYING
    assert [r.id for r in audit.latest_failed(stack.tenant)] == []

    # Retries exhausted: the row becomes the failed row replay finds; only once.
    assert audit.mark_failed(row.id) is True
    assert audit.mark_failed(row.id) is False
    failed = audit.get(row.id)
    assert failed is not None and failed.status == FAILED
    assert row.id in [r.id for r in audit.latest_failed(stack.tenant)]
