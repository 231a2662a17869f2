"""IFS → Pipedrive sync through real Celery worker processes, Redis, Postgres and both
simulators over HTTP (the "done when" list of the sync issue)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from connector.idmap import IdMap
from connector.pipedrive.provisioning import FieldKeys
from connector.storage.tenant_state import DatabaseTenantState
from simulators.ifs.schema import customer_order
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.integration


def _sync(stack: Stack, *args: str) -> dict[str, Any]:
    result = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "500", *args)
    assert result.returncode in (0, 2), result.stderr + stack.worker_logs()
    return json.loads(result.stdout.strip().splitlines()[-1])


def _field_keys(stack: Stack) -> FieldKeys:
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "field_keys")
    assert value is not None
    return FieldKeys.from_json(value)


def _writes(stack: Stack) -> int:
    writes = stack.pipedrive.stats()["writes"]
    return sum(
        count
        for entity in ("organization", "deal", "organizations", "deals")
        for method, count in writes.get(entity, {}).items()
        if method in ("POST", "PATCH", "DELETE", "create", "update", "delete")
    )


def _check_exactly_one(stack: Stack, customers: int, orders: int) -> None:
    keys = _field_keys(stack)
    organizations = stack.pipedrive.all_records("organization")
    deals = stack.pipedrive.all_records("deal")
    org_ids = Counter(
        o["custom_fields"].get(keys.organization["ifs_customer_id"]) for o in organizations
    )
    deal_nos = Counter(d["custom_fields"].get(keys.deal["ifs_order_no"]) for d in deals)
    assert len(organizations) == customers and set(org_ids.values()) == {1}
    assert len(deals) == orders and set(deal_nos.values()) == {1}


def test_small_sync_maps_every_field_and_resync_writes_nothing(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=12, orders=40, seed=7)
    stack.start_workers(count=2, concurrency=2)

    summary = _sync(stack)
    assert summary["created"] == 52 and summary["failed"] == 0, summary
    _check_exactly_one(stack, 12, 40)

    keys = _field_keys(stack)
    idmap = IdMap(stack.runtime.database)
    for order_no in stack.ifs.keys(customer_order())[:10]:
        order = stack.ifs.get_order(order_no)
        entry = idmap.get(stack.tenant, "order", order_no)
        assert entry is not None and entry.pipedrive_id is not None
        deal = stack.pipedrive.get("deal", entry.pipedrive_id)
        fields = deal["custom_fields"]
        assert fields[keys.deal["ifs_order_no"]] == order_no
        assert fields[keys.deal["order_status"]] == order["Objstate"]
        assert fields[keys.deal["cost_center"]] == order["Cf_Cost_Center"]
        assert fields[keys.deal["profit_center"]] == order["Cf_Profit_Center"]
        assert fields[keys.deal["region"]] == order["RegionCode"]
        assert deal["value"] == pytest.approx(float(order["TotalAmount"]))
        assert deal["currency"] == order["CurrencyCode"]
        customer = idmap.get(stack.tenant, "customer", order["CustomerNo"])
        assert customer is not None and deal["org_id"] == customer.pipedrive_id

    writes_before = _writes(stack)
    again = _sync(stack)
    assert again["created"] == 0 and again["updated"] == 0 and again["failed"] == 0, again
    assert _writes(stack) == writes_before
