"""Fair between tenants, and interactive before bulk: a tenant's throttled backlog holds no
queue positions or worker slots that another tenant's small sync and stage push could use."""

from __future__ import annotations

import json

import pytest

from connector.pipedrive.provisioning import PipelineIds
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.idmap import IdMap
from connector.storage.runs import latest_run, run_progress
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.work_items import WorkItems
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration

# A's plan: 4 requests per 2 s, so its 200 orders take well over a minute to drain.
A_BURST = 4
A_ORDERS = 200


def test_a_throttled_backlog_does_not_delay_another_tenants_stage_push_or_small_sync(
    stack_factory,
) -> None:
    a = stack_factory(tenant_overrides={"pipedrive": {"burst_limit": A_BURST}})
    b = stack_factory()
    a.ifs.seed(customers=4, orders=A_ORDERS, seed=21)
    b.ifs.seed(customers=2, orders=6, seed=22)
    orders_b = b.ifs.keys(customer_order())
    for order_no in orders_b:
        b.ifs.edit_order(order_no, Objstate="Planned")
    database = a.runtime.database
    items = WorkItems(database)

    # The deployment's receiver follows its tenants file, as a deployed one does, and sends
    # as the app does: interactive jobs to their own queue.
    receiving = Runtime(a.runtime.settings)
    receiving.go_live()
    app = create_app(runtime=receiving, enqueue=a.enqueue, check_broker=lambda: None)
    with RunningServer(app) as receiver:
        hook = f"{receiver.url}/webhooks/pipedrive/{b.tenant}"
        a.serve_tenant_of(b, webhook={"auth": "basic", "subscription_url": hook})
        a.start_workers(count=1, concurrency=2, queue=a.queue)
        a.start_workers(count=1, concurrency=1, queue=a.interactive_queue)
        first = a.cli("sync", b.tenant, "--wait", "--json")
        assert first.returncode == 0, first.stderr + a.worker_logs()
        assert a.cli("webhooks", "ensure", b.tenant).returncode == 0

        # A's backfill: planned, stored, and far from drained at A's budget.
        started = a.cli("sync", a.tenant)
        assert started.returncode == 0, started.stderr
        assert wait_until(lambda: items.backlog(a.tenant)[0] > A_ORDERS // 2, 120), a.worker_logs()
        most_in_flight = 0

        def backlog_of_a() -> tuple[int, int]:
            nonlocal most_in_flight
            waiting, in_flight = items.backlog(a.tenant)
            most_in_flight = max(most_in_flight, in_flight)
            return waiting, in_flight

        # B: a small sync (two orders changed) and a stage push, while A's backlog waits.
        b.ifs.edit_order(orders_b[0], Cf_Cost_Center="CC-B1")
        b.ifs.edit_order(orders_b[1], Cf_Cost_Center="CC-B2")
        small = a.cli("sync", b.tenant, "--wait", "--json")
        backlog_of_a()
        assert small.returncode == 0, small.stderr + a.worker_logs()
        summary = json.loads(small.stdout.strip().splitlines()[-1])
        assert summary["queued"] == 2 and summary["updated"] == 2, summary

        deal = IdMap(database).get(b.tenant, "order", orders_b[2])
        pipeline = DatabaseTenantState(database).get(b.tenant, "pipeline")
        assert deal is not None and deal.pipedrive_id is not None and pipeline is not None
        released = PipelineIds.from_json(pipeline).stage_ids["Released"]
        b.pipedrive.move_deal(deal.pipedrive_id, stage_id=released)

        def pushed() -> bool:
            backlog_of_a()
            return b.ifs.get_order(orders_b[2])["Objstate"] == "Released"

        assert wait_until(pushed, 60), a.worker_logs()

        # All of that while A's backlog is still there, and A never had more on its way than
        # its budget takes at once. (That A keeps its own share meanwhile is the dispatcher's
        # round-robin: tests/connector/dispatch. Here A's budget goes first to reading its
        # Pipedrive layout in each worker process, so how far it gets is not asserted.)
        waiting, _ = backlog_of_a()
        assert waiting > 0
        run = latest_run(database, a.tenant)
        assert run is not None
        progress = run_progress(database, run[0])
        assert progress is not None and progress.running
        assert most_in_flight <= A_BURST
        a.stop_workers()
    receiving.close()
