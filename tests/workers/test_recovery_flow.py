"""Recovery with real processes: a worker killed with SIGKILL mid-run (on Redis and on
RabbitMQ), a Redis restart without persistence, and a Postgres outage mid-run each end with
every record synced exactly once, every webhook event final, and no operator action.

Small runs and short timeouts (a 10 s visibility timeout, a sweeper every second): the
figures of a full-size run are bench/recovery.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import make_url

from connector.pipedrive.provisioning import FieldKeys, PipelineIds
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.audit import AuditLog
from connector.storage.database import Database
from connector.storage.idmap import IdMap
from connector.storage.models import WebhookEvent
from connector.storage.runs import latest_run, run_summary
from connector.storage.tenant_state import DatabaseTenantState
from sandbox.redis_server import PrivateRedis
from sandbox.stack import Stack
from sandbox.tcp_proxy import TcpProxy
from sandbox.workers import BIN, child_pids
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from tests.fixtures.processes import ProcessTree
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration

CUSTOMERS, ORDERS = 8, 40
# Slow enough that a run is still going when the worker dies or the database goes away.
PIPEDRIVE_LATENCY_MS = 40
SHORT_VISIBILITY = {"CONNECTOR_BROKER_VISIBILITY_TIMEOUT_S": "10"}


def _field_keys(stack: Stack, database: Database | None = None) -> FieldKeys:
    # A test that cut Postgres reads through its own connection: the stack's pooled ones died.
    value = DatabaseTenantState(database or stack.runtime.database).get(stack.tenant, "field_keys")
    assert value is not None
    return FieldKeys.from_json(value)


def _check_exactly_once(
    stack: Stack, customers: int, orders: int, database: Database | None = None
) -> None:
    keys = _field_keys(stack, database)
    orgs = Counter(
        o["custom_fields"].get(keys.organization["ifs_customer_id"])
        for o in stack.pipedrive.all_records("organization")
    )
    deals = Counter(
        d["custom_fields"].get(keys.deal["ifs_order_no"])
        for d in stack.pipedrive.all_records("deal")
    )
    assert len(orgs) == customers and set(orgs.values()) == {1}, orgs
    assert len(deals) == orders and set(deals.values()) == {1}, deals


def _start_sync(stack: Stack) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "ml-connector"), "sync", stack.tenant, "--wait", "--json", "--timeout", "240"],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _summary(stack: Stack, sync: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = sync.communicate(timeout=300)
    assert sync.returncode == 0, err + stack.worker_logs()
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


def _kill_9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its pool at once, as a host that dies (nothing is acknowledged,
    nothing is given back)."""
    for pid in [*child_pids(process.pid), process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.wait()


def _audit_rows(stack: Stack) -> int:
    return len(AuditLog(stack.runtime.database).list(tenant=stack.tenant, limit=10_000))


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_mid_run_costs_no_record_and_no_duplicate(stack_factory) -> None:
    stack = stack_factory(settings_env=SHORT_VISIBILITY)
    stack.ifs.seed(customers=CUSTOMERS, orders=ORDERS, seed=12)
    stack.pipedrive.set_faults({"latency_ms": PIPEDRIVE_LATENCY_MS})
    doomed, survivor = stack.start_workers(count=2, concurrency=2)
    stack.wait_for_pool(doomed, 2, timeout=60)

    sync = _start_sync(stack)
    assert wait_until(lambda: _audit_rows(stack) >= 10, 120), stack.worker_logs()
    _kill_9(doomed)

    summary = _summary(stack, sync)
    # A create the dead worker sent but never recorded is adopted by the rerun (an update).
    done = summary["created"] + summary["updated"] + summary["unchanged"]
    assert done == CUSTOMERS + ORDERS and summary["failed"] == 0, summary
    _check_exactly_once(stack, CUSTOMERS, ORDERS)
    assert survivor.poll() is None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    # Requested before stack_factory, so it stops after the stacks have forgotten their keys.
    with PrivateRedis(tmp_path) as server:
        yield server


def _beat(stack: Stack, tmp_path: Path) -> ProcessTree:
    argv = [str(BIN / "celery"), "-A", "workers.app:celery_app", "beat", "-l", "WARNING"]
    argv += ["-s", str(tmp_path / "beat-schedule")]
    return ProcessTree(argv, stack.env, tmp_path / "beat.log")


def _events(database: Database, tenant: str) -> list[WebhookEvent]:
    with database.session() as session:
        return list(
            session.scalars(
                select(WebhookEvent).where(WebhookEvent.tenant == tenant).order_by(WebhookEvent.id)
            )
        )


def test_a_redis_restart_without_persistence_loses_the_queue_and_the_sweeper_recovers_events(
    private_redis: PrivateRedis, stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory(
        redis=private_redis.url,
        settings_env={"CONNECTOR_SWEEP_INTERVAL_S": "1", "CONNECTOR_SWEEP_GRACE_S": "2"},
    )
    stack.ifs.seed(customers=2, orders=5, seed=4)
    for order_no in stack.ifs.keys(customer_order()):
        stack.ifs.edit_order(order_no, Objstate="Planned")
    runtime = Runtime(stack.runtime.settings)
    sender = Celery(broker=stack.env["CONNECTOR_BROKER_URL"])

    def enqueue(name: str, kwargs: dict[str, Any]) -> None:
        sender.send_task(name, kwargs=kwargs, queue=stack.queue)

    receiver_app = create_app(runtime=runtime, enqueue=enqueue, check_broker=lambda: None)
    try:
        with RunningServer(receiver_app) as receiver:
            url = f"{receiver.url}/webhooks/pipedrive/{stack.tenant}"
            stack.write_tenants(webhook={"auth": "basic", "subscription_url": url})
            stack.start_workers(count=1, concurrency=2)
            synced = stack.cli("sync", stack.tenant, "--wait", "--json")
            assert synced.returncode == 0, synced.stderr + stack.worker_logs()
            assert stack.cli("webhooks", "ensure", stack.tenant).returncode == 0
            stack.stop_workers()

            # Sales moves every deal while no worker runs: the events are stored and queued.
            idmap = IdMap(runtime.database)
            state = DatabaseTenantState(runtime.database).get(stack.tenant, "pipeline")
            assert state is not None
            released = PipelineIds.from_json(state).stage_ids["Released"]
            orders = stack.ifs.keys(customer_order())
            for order_no in orders:
                entry = idmap.get(stack.tenant, "order", order_no)
                assert entry is not None and entry.pipedrive_id is not None
                stack.pipedrive.move_deal(entry.pipedrive_id, stage_id=released)
            assert wait_until(
                lambda: (
                    [e.status for e in _events(runtime.database, stack.tenant)]
                    == ["enqueued"] * len(orders)
                ),
                30,
            ), [(e.status, e.detail) for e in _events(runtime.database, stack.tenant)]

            private_redis.restart()  # every queued stage push is gone
            writes_before = stack.ifs.stats()["writes"]
            stack.start_workers(count=1, concurrency=2)
            with _beat(stack, tmp_path) as beat:
                final = wait_until(
                    lambda: all(
                        e.status == "applied" for e in _events(runtime.database, stack.tenant)
                    ),
                    90,
                )
                assert final, beat.log() + stack.worker_logs()
            assert all(stack.ifs.get_order(o)["Objstate"] == "Released" for o in orders)
            assert stack.ifs.stats()["writes"] - writes_before == len(orders)
    finally:
        runtime.close()


OUTAGE_S = 15


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the session's Postgres, and the database URL through it."""
    direct = make_url(postgres_url)
    with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        yield proxy, direct.set(port=proxy.port).render_as_string(hide_password=False)


def test_a_postgres_outage_mid_run_leaves_every_task_retried_and_every_record_synced_once(
    postgres_url: str, postgres_proxy: tuple[TcpProxy, str], stack_factory
) -> None:
    proxy, proxied_url = postgres_proxy
    stack = stack_factory(database_url=proxied_url)
    stack.ifs.seed(customers=CUSTOMERS, orders=ORDERS, seed=21)
    stack.pipedrive.set_faults({"latency_ms": PIPEDRIVE_LATENCY_MS})
    stack.start_workers(count=2, concurrency=2)
    direct = Database(postgres_url)  # the test's own view, around the proxy
    try:
        queued = stack.cli("sync", stack.tenant)
        assert queued.returncode == 0, queued.stderr

        assert wait_until(lambda: _audit_rows(stack) >= 10, 120), stack.worker_logs()
        proxy.cut()
        time.sleep(OUTAGE_S)  # the outage itself
        proxy.restore()

        def finished() -> bool:
            run = latest_run(direct, stack.tenant)
            return run is not None and run_summary(direct, run[0]).finished(2)

        assert wait_until(finished, 240), stack.worker_logs()
        run = latest_run(direct, stack.tenant)
        assert run is not None
        summary = run_summary(direct, run[0])
        done = summary.created + summary.updated + summary.unchanged
        assert done == CUSTOMERS + ORDERS and summary.failed == 0, summary.as_dict()
        _check_exactly_once(stack, CUSTOMERS, ORDERS, direct)
        logs = stack.worker_logs(tail=200_000)
        assert "connection lost, retry" in logs, logs[-5000:]  # the outage did hit tasks
        assert "OperationalError" not in _task_failures(logs), _task_failures(logs)
    finally:
        direct.dispose()


def _task_failures(logs: str) -> str:
    # Celery logs a task that ended with an exception as "Task … raised unexpected: …".
    return "\n".join(line for line in logs.splitlines() if "raised unexpected" in line)
