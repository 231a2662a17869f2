"""Pipedrive → IFS end to end: simulated sales user → Pipedrive webhook → receiver over HTTP
→ Celery worker processes → IFS order status with If-Match (the webhook issue's "done when")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from celery import Celery
from sqlalchemy import select

from connector import jobs
from connector.pipedrive.provisioning import PipelineIds
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.idmap import IdMap
from connector.storage.models import WebhookEvent
from connector.storage.tenant_state import DatabaseTenantState
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration


@dataclass
class Flow:
    stack: Stack
    runtime: Runtime
    receiver_url: str
    sender: Celery

    def deal_of(self, order_no: str) -> int:
        entry = IdMap(self.runtime.database).get(self.stack.tenant, "order", order_no)
        assert entry is not None and entry.pipedrive_id is not None
        return entry.pipedrive_id

    def stage(self, name: str) -> int:
        pipeline = DatabaseTenantState(self.runtime.database).get(self.stack.tenant, "pipeline")
        assert pipeline is not None
        return PipelineIds.from_json(pipeline).stage_ids[name]

    def ifs_state(self, order_no: str) -> str:
        return str(self.stack.ifs.get_order(order_no)["Objstate"])

    def wait_state(self, order_no: str, state: str, timeout: float = 60) -> None:
        reached = wait_until(lambda: self.ifs_state(order_no) == state, timeout)
        assert reached, (
            f"{order_no} is {self.ifs_state(order_no)}, not {state}\n" + self.stack.worker_logs()
        )

    def events(self) -> list[WebhookEvent]:
        with self.runtime.database.session() as session:
            return list(
                session.scalars(
                    select(WebhookEvent)
                    .where(WebhookEvent.tenant == self.stack.tenant)
                    .order_by(WebhookEvent.id)
                )
            )


@pytest.fixture
def flow(stack_factory) -> Iterator[Flow]:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=10, seed=4)
    for order_no in stack.ifs.keys(customer_order()):
        stack.ifs.edit_order(order_no, Objstate="Planned")
    runtime = Runtime(stack.runtime.settings)
    sender = Celery(broker=stack.env["CONNECTOR_BROKER_URL"])
    # The receiver's own publisher, as deployed: stage pushes go to the interactive queue.
    app = create_app(runtime=runtime, check_broker=lambda: None)
    with RunningServer(app) as receiver:
        url = f"{receiver.url}/webhooks/pipedrive/{stack.tenant}"
        stack.write_tenants(webhook={"auth": "basic", "subscription_url": url})
        stack.start_workers(count=2, concurrency=2)
        synced = stack.cli("sync", stack.tenant, "--wait", "--json")
        assert synced.returncode == 0, synced.stderr + stack.worker_logs()
        ensured = stack.cli("webhooks", "ensure", stack.tenant)
        assert ensured.returncode == 0, ensured.stderr
        yield Flow(stack, runtime, url, sender)
        stack.stop_workers()
        runtime.close()


def test_a_deal_moved_by_a_user_releases_the_ifs_order_with_its_etag(flow: Flow) -> None:
    order_no = flow.stack.ifs.keys(customer_order())[0]
    writes_before = flow.stack.ifs.stats()["writes"]

    flow.stack.pipedrive.move_deal(flow.deal_of(order_no), stage_id=flow.stage("Released"))

    flow.wait_state(order_no, "Released")
    stats = flow.stack.ifs.stats()
    assert stats["writes"] - writes_before == 1
    assert stats["precondition_required"] == 0 and stats["precondition_failed"] == 0
    deal_events = [e for e in flow.events() if e.entity_id == flow.deal_of(order_no)]
    assert len(deal_events) == 1
    assert wait_until(lambda: flow.events()[-1].status == "applied", 30)


def test_an_ifs_edit_between_read_and_write_is_not_lost(flow: Flow) -> None:
    order_no = flow.stack.ifs.keys(customer_order())[1]
    flow.stack.ifs.edit_order_after_next_read(order_no, Cf_Cost_Center="CC-EDITED")

    flow.stack.pipedrive.move_deal(flow.deal_of(order_no), stage_id=flow.stage("Released"))

    flow.wait_state(order_no, "Released")
    order = flow.stack.ifs.get_order(order_no)
    assert order["Cf_Cost_Center"] == "CC-EDITED"  # the concurrent edit survived
    assert flow.stack.ifs.stats()["precondition_failed"] == 1


def test_duplicates_change_ifs_once_and_reordered_events_end_in_the_newest_state(
    flow: Flow,
) -> None:
    first, second = flow.stack.ifs.keys(customer_order())[2:4]
    flow.stack.pipedrive.set_faults({"duplicate_webhooks": 1.0, "seed": 1})
    writes_before = flow.stack.ifs.stats()["writes"]
    flow.stack.pipedrive.move_deal(flow.deal_of(first), stage_id=flow.stage("Released"))
    flow.wait_state(first, "Released")
    assert wait_until(
        lambda: (
            sum(
                d["entity_id"] == str(flow.deal_of(first))
                for d in flow.stack.pipedrive.delivery_log()
            )
            >= 2
        ),
        30,
    )
    # The third copy of the same delivery, sent again by hand.
    (event,) = [e for e in flow.events() if e.entity_id == flow.deal_of(first)]
    user = flow.runtime.vault.get(flow.stack.tenant, "webhook", "basic_user")
    password = flow.runtime.vault.get(flow.stack.tenant, "webhook", "basic_password")
    again = requests.post(
        flow.receiver_url,
        data=json.dumps(event.payload),
        auth=(user, password),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert again.status_code == 200 and again.json().get("status") == "duplicate"
    assert flow.stack.ifs.stats()["writes"] - writes_before == 1
    assert len([e for e in flow.events() if e.entity_id == flow.deal_of(first)]) == 1

    flow.stack.pipedrive.set_faults(
        {"duplicate_webhooks": 0.0, "reorder_webhooks": True, "reorder_hold_s": 1.5}
    )
    deal = flow.deal_of(second)
    flow.stack.pipedrive.move_deal(deal, stage_id=flow.stage("Released"))
    flow.stack.pipedrive.move_deal(deal, stage_id=flow.stage("Blocked"))
    flow.wait_state(second, "Blocked")
    assert wait_until(
        lambda: (
            len([e for e in flow.events() if e.entity_id == deal]) == 2
            and all(
                e.status in ("applied", "ignored") for e in flow.events() if e.entity_id == deal
            )
        ),
        30,
    )
    assert flow.ifs_state(second) == "Blocked"


def test_a_deleted_webhook_is_recreated_and_reconciliation_applies_missed_moves(
    flow: Flow,
) -> None:
    order_no = flow.stack.ifs.keys(customer_order())[5]
    (webhook,) = [w for w in flow.stack.pipedrive.list_webhooks() if w["event_action"] == "change"]
    flow.stack.pipedrive.delete_webhook(int(webhook["id"]), reason="3 days of failures")

    flow.stack.pipedrive.move_deal(flow.deal_of(order_no), stage_id=flow.stage("Released"))
    assert flow.ifs_state(order_no) == "Planned"  # nobody told IFS

    ensured = flow.stack.cli("webhooks", "ensure", flow.stack.tenant)
    assert ensured.returncode == 0, ensured.stderr
    assert len(flow.stack.pipedrive.list_webhooks()) == 3  # change.deal, delete.deal/organization
    flow.sender.send_task(
        jobs.RECONCILE_STAGES,
        kwargs={"tenant": flow.stack.tenant},
        queue=flow.stack.env["CONNECTOR_QUEUE"],
    )
    flow.wait_state(order_no, "Released")
