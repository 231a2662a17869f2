"""Records' life end to end: sales users delete and merge deals and organizations in Pipedrive;
webhooks reach the receiver over HTTP, Celery worker processes follow them in the id map, and
the next sync neither fails nor duplicates (the lifecycle issue's "done when")."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery

from connector.pipedrive.provisioning import FieldKeys
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.audit import FAILED, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER, IdMap
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import WebhookEvents
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration


@contextmanager
def running(stack: Stack, **tenant: Any) -> Iterator[Runtime]:
    """Receiver over HTTP, webhooks registered, two worker processes, a first full sync."""
    stack.ifs.seed(customers=3, orders=9, seed=13)
    runtime = Runtime(stack.runtime.settings)
    sender = Celery(broker=stack.env["CONNECTOR_BROKER_URL"])

    def enqueue(name: str, kwargs: dict[str, Any]) -> None:
        sender.send_task(name, kwargs=kwargs, queue=stack.env["CONNECTOR_QUEUE"])

    app = create_app(runtime=runtime, enqueue=enqueue, check_broker=lambda: None)
    with RunningServer(app) as receiver:
        url = f"{receiver.url}/webhooks/pipedrive/{stack.tenant}"
        stack.write_tenants(webhook={"auth": "basic", "subscription_url": url}, **tenant)
        stack.start_workers(count=2, concurrency=2)
        _sync(stack)
        ensured = stack.cli("webhooks", "ensure", stack.tenant)
        assert ensured.returncode == 0, ensured.stderr
        yield runtime
        stack.stop_workers()
        runtime.close()


def _sync(stack: Stack, *args: str) -> dict[str, Any]:
    result = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "300", *args)
    assert result.returncode in (0, 2), result.stderr + stack.worker_logs()
    return json.loads(result.stdout.strip().splitlines()[-1])


def _keys(stack: Stack) -> FieldKeys:
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "field_keys")
    assert value is not None
    return FieldKeys.from_json(value)


def _linked(stack: Stack, entity: str, key: str) -> int | None:
    entry = IdMap(stack.runtime.database).get(stack.tenant, entity, key)
    assert entry is not None
    return entry.pipedrive_id


def _deals_of(stack: Stack, order_no: str) -> list[dict[str, Any]]:
    field = _keys(stack).deal["ifs_order_no"]
    return [
        d for d in stack.pipedrive.all_records("deal") if d["custom_fields"].get(field) == order_no
    ]


def _history(stack: Stack, entity: str, key: str) -> dict[str, Any]:
    result = stack.cli("audit", "history", stack.tenant, entity, key, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _failed(stack: Stack) -> list[Any]:
    return AuditLog(stack.runtime.database).list(tenant=stack.tenant, status=FAILED)


def _event_handled(stack: Stack, action: str, entity_id: int) -> Callable[[], bool]:
    def handled() -> bool:
        rows = WebhookEvents(stack.runtime.database)
        found = [
            row
            for row in _events(rows, stack.tenant)
            if row.action == action and row.entity_id == entity_id
        ]
        return bool(found) and all(row.status in ("applied", "ignored") for row in found)

    return handled


def _events(events: WebhookEvents, tenant: str) -> list[Any]:
    from sqlalchemy import select

    from connector.storage.models import WebhookEvent

    with events.database.session() as session:
        return list(session.scalars(select(WebhookEvent).where(WebhookEvent.tenant == tenant)))


def test_recreate_a_user_deleted_deal_once_its_order_changes(stack_factory) -> None:
    stack = stack_factory()
    with running(stack):
        order_no = stack.ifs.keys(customer_order())[0]
        gone = _linked(stack, ORDER, order_no)
        assert gone is not None
        stack.pipedrive.delete("deal", gone, "app", stack.pipedrive.settings.app_user_id)
        assert wait_until(_event_handled(stack, "delete", gone), 60), stack.worker_logs()
        assert _linked(stack, ORDER, order_no) is None  # the webhook unlinked it at once
        stack.ifs.edit_order(order_no, Cf_Cost_Center="CC-AFTER-DELETE")

        summary = _sync(stack)

        assert summary["failed"] == 0 and summary["created"] == 1, summary
        [deal] = _deals_of(stack, order_no)
        assert deal["id"] == _linked(stack, ORDER, order_no) != gone
        assert _failed(stack) == []


def test_respect_writes_nothing_says_why_once_and_relink_brings_it_back(stack_factory) -> None:
    stack = stack_factory()
    with running(stack, lifecycle={"on_pipedrive_delete": "respect"}):
        order_no = stack.ifs.keys(customer_order())[1]
        gone = _linked(stack, ORDER, order_no)
        assert gone is not None
        stack.pipedrive.delete("deal", gone, "app", stack.pipedrive.settings.app_user_id)
        assert wait_until(_event_handled(stack, "delete", gone), 60), stack.worker_logs()
        stack.ifs.edit_order(order_no, Cf_Cost_Center="CC-NOT-WRITTEN")
        posts = stack.pipedrive.stats()["writes"]["deal"].get("POST", 0)

        _sync(stack)
        _sync(stack, "--full")

        assert _deals_of(stack, order_no) == []
        assert stack.pipedrive.stats()["writes"]["deal"].get("POST", 0) == posts
        rows = [
            row
            for row in AuditLog(stack.runtime.database).list(tenant=stack.tenant, limit=5000)
            if row.record_key == order_no and row.operation == "tombstoned"
        ]
        assert len(rows) == 1 and "respect" in json.dumps(rows[0].response_summary)
        assert _failed(stack) == []

        relinked = stack.cli("relink", stack.tenant, ORDER, order_no, "--json")
        assert relinked.returncode == 0, relinked.stderr
        result = json.loads(relinked.stdout)
        assert result["sync"] == "created"
        [deal] = _deals_of(stack, order_no)
        assert deal["id"] == result["pipedrive_id"] == _linked(stack, ORDER, order_no)
        assert deal["custom_fields"][_keys(stack).deal["cost_center"]] == "CC-NOT-WRITTEN"

        story = _history(stack, ORDER, order_no)
        assert story["pipedrive_ids"] == [gone, deal["id"]], story
        whats = [chapter["what"] for chapter in story["chapters"]]
        deleted, relinked = whats.index("webhook delete"), whats.index("relink")
        assert whats[0] == "create" and "create" in whats[relinked:], whats
        assert deleted < whats.index("tombstoned") < relinked, whats


def test_sync_full_recreate_deleted_brings_back_tombstoned_deals(stack_factory) -> None:
    stack = stack_factory()
    with running(stack, lifecycle={"on_pipedrive_delete": "respect"}):
        order_no = stack.ifs.keys(customer_order())[2]
        gone = _linked(stack, ORDER, order_no)
        assert gone is not None
        stack.pipedrive.delete("deal", gone, "app", stack.pipedrive.settings.app_user_id)
        assert wait_until(_event_handled(stack, "delete", gone), 60), stack.worker_logs()

        summary = _sync(stack, "--full", "--recreate-deleted")

        assert summary["failed"] == 0 and summary["created"] == 1, summary
        assert len(_deals_of(stack, order_no)) == 1


def test_two_organizations_merged_by_a_user_leave_one_per_customer_with_every_deal(
    stack_factory,
) -> None:
    stack = stack_factory()
    with running(stack):
        customer = sorted(stack.ifs.keys(stack.ifs.customer_type))[0]
        linked = _linked(stack, CUSTOMER, customer)
        assert linked is not None
        user = stack.pipedrive.settings.app_user_id
        survivor = stack.pipedrive.create("organization", {"name": "Hand-made twin"}, "app", user)
        stack.pipedrive.merge("organization", linked, survivor["id"], "app", user)
        assert wait_until(_event_handled(stack, "delete", linked), 60), stack.worker_logs()
        assert _linked(stack, CUSTOMER, customer) == survivor["id"]
        story = _history(stack, CUSTOMER, customer)
        assert story["pipedrive_ids"] == [linked, survivor["id"]], story
        chapters = {chapter["what"]: chapter for chapter in story["chapters"]}
        assert f"merged into {survivor['id']}" in chapters["webhook delete"]["detail"]
        assert chapters["relinked"]["status"] == "succeeded", chapters

        summary = _sync(stack)
        again = _sync(stack, "--full")

        assert summary["failed"] == again["failed"] == 0, (summary, again)
        keys = _keys(stack)
        per_customer = Counter(
            o["custom_fields"].get(keys.organization["ifs_customer_id"])
            for o in stack.pipedrive.all_records("organization")
        )
        assert len(per_customer) == 3 and set(per_customer.values()) == {1}, per_customer
        organization_of = {
            key: _linked(stack, CUSTOMER, key) for key in stack.ifs.keys(stack.ifs.customer_type)
        }
        for order_no in stack.ifs.keys(customer_order()):
            [deal] = _deals_of(stack, order_no)
            assert deal["org_id"] == organization_of[stack.ifs.get_order(order_no)["CustomerNo"]]
        assert _failed(stack) == []


def test_a_won_deal_stays_won_through_sync_full_and_an_order_gone_from_ifs_closes_its_deal(
    stack_factory,
) -> None:
    stack = stack_factory()
    with running(stack, lifecycle={"on_ifs_missing": "close"}):
        orders = stack.ifs.keys(customer_order())
        order_no = orders[3]
        deal_id = _linked(stack, ORDER, order_no)
        assert deal_id is not None
        stack.pipedrive.move_deal(deal_id, status="won")
        removed = next(
            key
            for key in orders
            if key != order_no
            and stack.pipedrive.get("deal", _linked(stack, ORDER, key))["status"] == "open"
        )
        stack.ifs.remove(customer_order(), removed)

        summary = _sync(stack, "--full")

        assert summary["failed"] == 0 and summary["updated"] >= 1, summary
        assert stack.pipedrive.get("deal", deal_id)["status"] == "won"
        closed = stack.pipedrive.get("deal", _linked(stack, ORDER, removed))
        assert (closed["status"], closed["lost_reason"]) == ("lost", "Removed from IFS")
        assert _failed(stack) == []
