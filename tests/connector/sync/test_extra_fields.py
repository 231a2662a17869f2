"""`order_mapping.extra` end to end: further IFS properties land in Pipedrive fields of their
own types (an enum by option id, a monetary amount with its currency, a date), follow IFS
changes, and a re-sync writes nothing (TenantSync against both simulators over HTTP)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from connector.storage.idmap import CUSTOMER, ORDER, IdMap
from connector.sync import ENTITIES
from connector.sync.engine import Outcome, TenantSync
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from tests.connector.sync.support import run_sync
from tests.fixtures.tenants import EXTRA_ORDER_FIELDS

pytestmark = pytest.mark.integration


def _deal_writes(stack: Stack) -> int:
    """Deal creates and updates the simulator applied."""
    writes = stack.pipedrive.stats()["writes"]
    return sum(
        count
        for entity in ("deal", "deals")
        for method, count in writes.get(entity, {}).items()
        if method in ("POST", "PATCH")
    )


def test_extra_order_fields_are_provisioned_synced_updated_and_left_alone_when_unchanged(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(tenant_overrides={"order_mapping": {"extra": EXTRA_ORDER_FIELDS}})
    stack.ifs.seed(customers=2, orders=4, seed=7)
    sync = TenantSync(stack.runtime, stack.tenant)

    outcomes = run_sync(sync)

    assert outcomes[ORDER] == [Outcome.CREATED] * 4
    fields = {f["name"]: f for f in stack.pipedrive.list_fields("deal")}
    terms, prepayment, wanted = (
        fields[name] for name in ("Delivery terms", "Proposed prepayment", "Wanted delivery")
    )
    assert (terms["field_type"], prepayment["field_type"], wanted["field_type"]) == (
        "enum",
        "monetary",
        "date",
    )
    option = {o["label"]: o["id"] for o in terms["options"]}
    idmap = IdMap(stack.runtime.database)
    order_nos = sorted(stack.ifs.keys(customer_order()))
    for order_no in order_nos:
        order = stack.ifs.get_order(order_no)
        entry = idmap.get(stack.tenant, ORDER, order_no)
        assert entry is not None and entry.pipedrive_id is not None
        custom = stack.pipedrive.get("deal", entry.pipedrive_id)["custom_fields"]
        assert custom[terms["key"]] == option["Ex works"]  # every seeded order is EXW
        assert custom[prepayment["key"]] == {
            "value": float(order["ProposedPrepaymentAmount"]),
            "currency": order["CurrencyCode"],
        }
        assert custom[wanted["key"]] == order["WantedDeliveryDate"][:10]

    changed = order_nos[0]
    stack.ifs.edit_order(
        changed,
        DeliveryTerms="DAP",
        ProposedPrepaymentAmount=1250.5,
        WantedDeliveryDate="2026-03-02T00:00:00Z",
    )
    writes = _deal_writes(stack)

    outcomes = run_sync(sync)

    assert outcomes == {CUSTOMER: [], ORDER: [Outcome.UPDATED]}
    assert _deal_writes(stack) == writes + 1
    entry = idmap.get(stack.tenant, ORDER, changed)
    assert entry is not None and entry.pipedrive_id is not None
    deal = stack.pipedrive.get("deal", entry.pipedrive_id)
    currency = stack.ifs.get_order(changed)["CurrencyCode"]
    assert deal["custom_fields"][terms["key"]] == option["Delivered at place"]
    assert deal["custom_fields"][prepayment["key"]] == {"value": 1250.5, "currency": currency}
    assert deal["custom_fields"][wanted["key"]] == "2026-03-02"

    # Nothing changed since: nothing is planned, and a full run that compares with
    # Pipedrive's current values (option ids, monetary objects) finds nothing to write.
    again = TenantSync(stack.runtime, stack.tenant)
    assert [again.plan(entity).items for entity in ENTITIES] == [[], []]
    full = run_sync(again, full=True)
    assert set(full[CUSTOMER]) | set(full[ORDER]) == {Outcome.UNCHANGED}
    assert _deal_writes(stack) == writes + 1
