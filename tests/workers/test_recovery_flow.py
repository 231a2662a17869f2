"""Recovery with real processes: a worker killed with SIGKILL mid-run (on Redis and on
RabbitMQ), a Redis restart without persistence and one with AOF, and a 30 s Postgres outage,
each in the middle of a backfill with stored webhook events in flight, each end with every
record synced exactly once, every webhook event final, and no operator action.

Each test runs the same scenario (`Backfill`): a tenant whose customers and first orders are
synced and whose webhook is registered with a receiver in this process; then a run that
creates the new orders against a slow Pipedrive (so the fault hits it mid-run, with every
worker process inside a task), while sales moves the first orders' deals. Recovery is the
product's alone: beat runs the sweeper of webhook events, the dispatcher releases again what
it released and never saw finish, and no scheduled sync or reconciliation runs during a
test. Short timeouts (a 10 s visibility timeout, a 20 s stale release, a sweep every second):
the figures of a full-size run are bench/recovery.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from connector import jobs
from connector.pipedrive.provisioning import FieldKeys, PipelineIds
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.audit import PIPEDRIVE_TO_IFS, AuditLog
from connector.storage.database import Database
from connector.storage.idmap import IdMap
from connector.storage.models import WebhookEvent
from connector.storage.runs import latest_run, run_summary
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import FINISHED
from connector.storage.work_items import WorkItems
from sandbox.redis_server import PrivateRedis
from sandbox.stack import Stack
from sandbox.tcp_proxy import TcpProxy
from sandbox.workers import BIN, child_pids
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from tests.fixtures.processes import ProcessTree
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration

# Synced before the fault: every customer and MOVED orders, whose deals sales moves while
# the fault hits the run that creates BACKFILL new orders.
CUSTOMERS, MOVED, BACKFILL = 8, 5, 60
RECORDS = CUSTOMERS + MOVED + BACKFILL
SETTINGS = {
    "CONNECTOR_BROKER_VISIBILITY_TIMEOUT_S": "10",
    "CONNECTOR_DISPATCH_STALE_AFTER_S": "20",
    "CONNECTOR_SWEEP_INTERVAL_S": "1",
    "CONNECTOR_SWEEP_GRACE_S": "2",
}
# Never during a test: what recovers is the sweeper and the dispatcher, not a new run.
TENANT = {"schedule": "0 3 1 1 *"}
# Slow enough that every worker process is inside a record's task when the fault comes, and
# that the run has records left to do then; a slow IFS keeps stage pushes in flight too.
PIPEDRIVE_LATENCY_MS, IFS_LATENCY_MS = 200, 200
OUTAGE_S = 30  # the Postgres outage


class Backfill:
    """The scenario every test here runs, on `stack` (its workers, broker and database)."""

    def __init__(self, stack: Stack, folder: Path, database: Database | None = None) -> None:
        self.stack, self.folder = stack, folder
        # A test that cuts Postgres reads through its own connection, around the proxy.
        self.database = database or stack.runtime.database
        self.receiving = Runtime(stack.runtime.settings)
        self.moved: list[str] = []
        self.audit_rows_before = 0
        self.ifs_writes_before = 0

    @contextmanager
    def receiver(self) -> Iterator[None]:
        """The webhook receiver in this process, sending as the stack's processes do."""
        app = create_app(
            runtime=self.receiving, enqueue=self.stack.enqueue, check_broker=lambda: None
        )
        try:
            with RunningServer(app) as server:
                url = f"{server.url}/webhooks/pipedrive/{self.stack.tenant}"
                self.stack.write_tenants(webhook={"auth": "basic", "subscription_url": url})
                yield
        finally:
            self.receiving.close()

    def prepare(self) -> None:
        """Sync the customers and the MOVED orders (set Planned, for sales to release), register
        the webhook, stop the workers, and add the BACKFILL orders to IFS."""
        stack = self.stack
        stack.ifs.seed(customers=CUSTOMERS, orders=MOVED, seed=12)
        self.moved = stack.ifs.keys(customer_order())
        for order_no in self.moved:
            stack.ifs.edit_order(order_no, Objstate="Planned")
        stack.start_workers(count=1, concurrency=2)
        synced = stack.cli("sync", stack.tenant, "--wait", "--json")
        assert synced.returncode == 0, synced.stderr + stack.worker_logs()
        ensured = stack.cli("webhooks", "ensure", stack.tenant)
        assert ensured.returncode == 0, ensured.stderr
        stack.stop_workers()
        for _ in range(BACKFILL):
            stack.ifs.insert_order({})
        stack.pipedrive.set_faults({"latency_ms": PIPEDRIVE_LATENCY_MS})
        stack.ifs.set_faults(latency_ms=IFS_LATENCY_MS)
        self.audit_rows_before = self.audit_rows()

    def beat(self) -> ProcessTree:
        """Beat as deployed: here it runs only the sweeper (no tenant entry falls due)."""
        argv = [str(BIN / "celery"), "-A", "workers.app:celery_app", "beat", "-l", "WARNING"]
        argv += ["-s", str(self.folder / "beat-schedule")]
        return ProcessTree(argv, self.stack.env, self.folder / "beat.log")

    def start_sync(self) -> subprocess.Popen[str]:
        """`sync --wait` as an operator starts it; `summary()` reads what it printed."""
        command = ["sync", self.stack.tenant, "--wait", "--json", "--timeout", "300"]
        return subprocess.Popen(
            [str(BIN / "ml-connector"), *command],
            env=self.stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def summary(self, sync: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = sync.communicate(timeout=360)
        assert sync.returncode == 0, err + self.stack.worker_logs()
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary

    def move_deals(self) -> None:
        """Sales releases the MOVED orders' deals; back once their events are stored, with
        the run still going (the fault that follows meets both)."""
        idmap = IdMap(self.database)
        state = DatabaseTenantState(self.database).get(self.stack.tenant, "pipeline")
        assert state is not None
        released = PipelineIds.from_json(state).stage_ids["Released"]
        self.ifs_writes_before = self.stack.ifs.stats()["writes"]
        for order_no in self.moved:
            entry = idmap.get(self.stack.tenant, "order", order_no)
            assert entry is not None and entry.pipedrive_id is not None
            self.stack.pipedrive.move_deal(entry.pipedrive_id, stage_id=released)
        assert wait_until(lambda: len(self.events()) == MOVED, 30), self.events()
        # Else the fault would meet no run: the test would prove nothing.
        assert WorkItems(self.database).backlog(self.stack.tenant) != (0, 0)

    def wait_mid_run(self) -> None:
        """Until the run has synced some records."""
        assert wait_until(lambda: self.audit_rows() >= self.audit_rows_before + 6, 120), (
            self.stack.worker_logs()
        )

    def audit_rows(self) -> int:
        return len(AuditLog(self.database).list(tenant=self.stack.tenant, limit=10_000))

    def events(self) -> list[tuple[str, str | None]]:
        """(status, detail) of every stored webhook event of the tenant."""
        with self.database.session() as session:
            rows = session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.tenant == self.stack.tenant)
                .order_by(WebhookEvent.id)
            )
            return [(row.status, row.detail) for row in rows]

    def pushes(self) -> list[tuple[str, str, str | None]]:
        """(record, status, error) of every stage push attempt (what a failure shows)."""
        rows = AuditLog(self.database).list(tenant=self.stack.tenant, limit=10_000)
        return [(r.record_key, r.status, r.error) for r in rows if r.direction == PIPEDRIVE_TO_IFS]

    def check_run(self, summary: dict[str, Any]) -> None:
        # A create the fault interrupted before it was recorded is adopted by the rerun (an
        # update), and the pushed orders' deals may be updated too.
        done = summary["created"] + summary["updated"] + summary["unchanged"]
        assert done == RECORDS and summary["failed"] == 0, summary
        self.check_exactly_once()

    def check_exactly_once(self) -> None:
        value = DatabaseTenantState(self.database).get(self.stack.tenant, "field_keys")
        assert value is not None
        keys = FieldKeys.from_json(value)
        pipedrive = self.stack.pipedrive
        orgs = Counter(
            o["custom_fields"].get(keys.organization["ifs_customer_id"])
            for o in pipedrive.all_records("organization")
        )
        deals = Counter(
            d["custom_fields"].get(keys.deal["ifs_order_no"]) for d in pipedrive.all_records("deal")
        )
        assert len(orgs) == CUSTOMERS and set(orgs.values()) == {1}, orgs
        assert len(deals) == MOVED + BACKFILL and set(deals.values()) == {1}, deals
        assert set(deals) == set(self.stack.ifs.keys(customer_order()))

    def check_events_final(self, beat: ProcessTree) -> None:
        """Every stored event finished, each order pushed to IFS once. (An event whose push
        changed IFS just before its outcome could be stored ends `ignored`, "already
        Released", by its retry: final, and IFS written once.)"""

        def final_events() -> bool:
            return all(status in FINISHED for status, _ in self.events())

        final = wait_until(final_events, 120)
        assert final, f"{self.events()}\n{self.pushes()}\n{beat.log()}{self.stack.worker_logs()}"
        ifs = self.stack.ifs
        assert all(ifs.get_order(o)["Objstate"] == "Released" for o in self.moved)
        assert ifs.stats()["writes"] - self.ifs_writes_before == MOVED

    def check_no_task_vanished(self) -> None:
        # Celery logs a task that ended with an exception as "Task … raised unexpected: …":
        # a record or push that did so left no outcome (the lost orders).
        failures = _task_failures(self.stack.worker_logs(tail=500_000))
        assert not failures, failures


def _task_failures(logs: str) -> list[str]:
    names = (*jobs.RECORD_JOBS, jobs.PUSH_STAGE, jobs.PLAN_SYNC)
    return [
        line
        for line in logs.splitlines()
        if "raised unexpected" in line and any(name in line for name in names)
    ]


def _kill_9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its pool at once, as a host that dies (nothing is acknowledged,
    nothing is given back)."""
    for pid in [*child_pids(process.pid), process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_mid_run_costs_no_record_no_duplicate_and_no_event(
    stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory(settings_env=SETTINGS, tenant_overrides=TENANT)
    backfill = Backfill(stack, tmp_path)
    with backfill.receiver():
        backfill.prepare()
        # The doomed worker alone until the run is under way, so that it surely dies inside
        # tasks (records and pushes) and holding messages.
        (doomed,) = stack.start_workers(count=1, concurrency=2)
        stack.wait_for_pool(doomed, 2, timeout=60)
        with backfill.beat() as beat:
            sync = backfill.start_sync()
            backfill.wait_mid_run()
            backfill.move_deals()
            (survivor,) = stack.start_workers(count=1, concurrency=2)
            stack.wait_for_pool(survivor, 2, timeout=60)
            _kill_9(doomed)

            backfill.check_run(backfill.summary(sync))
            backfill.check_events_final(beat)
    backfill.check_no_task_vanished()
    assert survivor.poll() is None


@pytest.fixture
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    # Requested before stack_factory, so it stops after the stacks have forgotten their keys.
    with PrivateRedis(tmp_path, persistence=request.param) as server:
        yield server


@pytest.mark.parametrize("private_redis", ["none", "aof"], indirect=True)
def test_a_redis_restart_mid_run_costs_no_record_no_duplicate_and_no_event(
    private_redis: PrivateRedis, stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory(redis=private_redis.url, settings_env=SETTINGS, tenant_overrides=TENANT)
    backfill = Backfill(stack, tmp_path)
    with backfill.receiver():
        backfill.prepare()
        # Only bulk consumers while Redis goes down: the stage pushes are still queued.
        stack.start_workers(count=2, concurrency=2, queue=stack.queue)
        with backfill.beat() as beat:
            sync = backfill.start_sync()
            backfill.wait_mid_run()
            backfill.move_deals()
            # Crashed with its queues, limiter counts, locks and the dispatcher's lease; with
            # AOF all of it but about the last second comes back.
            private_redis.restart()
            stack.start_workers(count=1, concurrency=2, queue=stack.interactive_queue)

            backfill.check_run(backfill.summary(sync))
            backfill.check_events_final(beat)
    backfill.check_no_task_vanished()


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the session's Postgres, and the database URL through it."""
    direct = make_url(postgres_url)
    with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        yield proxy, direct.set(port=proxy.port).render_as_string(hide_password=False)


def test_a_postgres_outage_mid_run_costs_no_record_no_duplicate_and_no_event(
    postgres_url: str, postgres_proxy: tuple[TcpProxy, str], stack_factory, tmp_path: Path
) -> None:
    proxy, proxied_url = postgres_proxy
    stack = stack_factory(database_url=proxied_url, settings_env=SETTINGS, tenant_overrides=TENANT)
    direct = Database(postgres_url)  # the test's own view, around the proxy
    backfill = Backfill(stack, tmp_path, direct)
    try:
        with backfill.receiver():
            backfill.prepare()
            stack.start_workers(count=2, concurrency=2)
            with backfill.beat() as beat:
                # Not --wait: the command itself reads Postgres, which goes away.
                queued = stack.cli("sync", stack.tenant)
                assert queued.returncode == 0, queued.stderr
                backfill.wait_mid_run()
                backfill.move_deals()  # stored: their pushes meet the outage
                proxy.cut()
                time.sleep(OUTAGE_S)  # the outage itself
                proxy.restore()

                def finished() -> bool:
                    run = latest_run(direct, stack.tenant)
                    return run is not None and run_summary(direct, run[0]).finished(2)

                assert wait_until(finished, 300), stack.worker_logs()
                run = latest_run(direct, stack.tenant)
                assert run is not None
                backfill.check_run(run_summary(direct, run[0]).as_dict())
                backfill.check_events_final(beat)
        backfill.check_no_task_vanished()
        logs = stack.worker_logs(tail=500_000)
        assert "connection lost, retry" in logs, logs[-5000:]  # the outage did hit tasks
    finally:
        direct.dispose()
