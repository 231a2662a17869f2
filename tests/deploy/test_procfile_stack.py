"""deploy/Procfile run for real with honcho: receiver under gunicorn, bulk and interactive
workers, beat."""

from __future__ import annotations

import json
import os
import shelve
import signal
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from connector.pipedrive.provisioning import FieldKeys, PipelineIds
from connector.polling import wait_until
from connector.storage.idmap import IdMap
from connector.storage.models import WebhookEvent
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import WebhookEventStatus
from sandbox.stack import Stack
from sandbox.workers import BIN
from simulators.ifs.schema import customer_order
from simulators.serving import free_port
from tests.fixtures.processes import ProcessTree, wait_for_http
from workers.schedule import tenant_crontab

# Both run the Procfile, whose workers have fixed names (worker1@host, worker2@host) on the
# shared broker: under pytest-xdist they run one after the other, in one test process.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("procfile")]

REPO_ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS, ORDERS = 3, 8
WORKERS = ("worker1", "worker2", "interactive")
# Settings honcho passes on through its env file, so that a developer's ./.env cannot
# point this test at another database or queue.
PASSED_SETTINGS = (
    "CONNECTOR_DATABASE_URL",
    "CONNECTOR_REDIS_URL",
    "CONNECTOR_BROKER_URL",
    "CONNECTOR_QUEUE",
    "CONNECTOR_ENCRYPTION_KEYS",
    "CONNECTOR_TENANTS_FILE",
    "CONNECTOR_LOG_LEVEL",
    "CONNECTOR_CONSOLE_USERS",
    "MLC_VAR_DIR",
    "MLC_CONSOLE_PORT",
)


def _honcho(stack: Stack, port: int, folder: Path, console_port: int) -> ProcessTree:
    env = {
        **stack.env,
        "CONNECTOR_CONSOLE_USERS": f"ops:{generate_password_hash('procfile')}",
        "MLC_CONSOLE_PORT": str(console_port),
        "PATH": f"{BIN}{os.pathsep}{stack.env.get('PATH', '')}",
        "MLC_VAR_DIR": str(folder / "var"),
        "CONNECTOR_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # gunicorn >= 25.1 opens a control socket, by default in $HOME shared by every
        # gunicorn of the user; keep this one's in the test's directory.
        "XDG_RUNTIME_DIR": str(folder),
    }
    env_file = folder / "honcho.env"
    env_file.write_text("".join(f"{name}={env[name]}\n" for name in PASSED_SETTINGS))
    argv = [
        str(BIN / "honcho"),
        "-f",
        "deploy/Procfile",
        "-d",
        str(REPO_ROOT),
        "-e",
        str(env_file),
        "start",
        "-p",
        str(port),
    ]
    # The Procfile names deploy/entrypoint.sh and var/ relative to the repository root.
    return ProcessTree(argv, env, folder / "honcho.log", cwd=REPO_ROOT, stop_signal=signal.SIGINT)


def _workers_answer(broker_url: str) -> bool:
    host = socket.gethostname()
    wanted = [f"{name}@{host}" for name in WORKERS]
    app = Celery(broker=broker_url)
    try:
        replies = app.control.ping(destination=wanted, timeout=1.0) or []
    finally:
        app.close()
    answered = {name for reply in replies for name in reply}
    return answered == set(wanted)


def _check_exactly_one_each(stack: Stack) -> None:
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "field_keys")
    assert value is not None
    keys = FieldKeys.from_json(value)
    organizations = stack.pipedrive.all_records("organization")
    deals = stack.pipedrive.all_records("deal")
    org_ids = Counter(
        o["custom_fields"].get(keys.organization["ifs_customer_id"]) for o in organizations
    )
    deal_nos = Counter(d["custom_fields"].get(keys.deal["ifs_order_no"]) for d in deals)
    assert len(organizations) == CUSTOMERS and set(org_ids.values()) == {1}, org_ids
    assert len(deals) == ORDERS and set(deal_nos.values()) == {1}, deal_nos
    assert set(deal_nos) == set(stack.ifs.keys(customer_order()))


def _released_stage_id(stack: Stack) -> int:
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "pipeline")
    assert value is not None, "the sync did not provision the tenant pipeline"
    return PipelineIds.from_json(value).stage_ids["Released"]


def _deal_events(stack: Stack, deal_id: int) -> list[WebhookEvent]:
    with stack.runtime.database.session() as session:
        return list(
            session.scalars(
                select(WebhookEvent).where(
                    WebhookEvent.tenant == stack.tenant, WebhookEvent.entity_id == deal_id
                )
            )
        )


def test_procfile_serves_sync_webhook_and_stage_push_then_stops_cleanly(
    stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=CUSTOMERS, orders=ORDERS, seed=1)
    port = free_port()
    hook_url = f"http://127.0.0.1:{port}/webhooks/pipedrive/{stack.tenant}"
    # Every process reads the tenants file at start: the receiver's URL must be in it first.
    # Beat's sync runs at a minute half an hour away, so that it cannot run during the test
    # and change the counts of the sync started here.
    schedule = f"{(datetime.now(UTC).minute + 30) % 60} * * * *"
    stack.write_tenants(webhook={"subscription_url": hook_url}, schedule=schedule)
    schedule_file = tmp_path / "var" / "celerybeat-schedule"

    console_port = free_port()
    with _honcho(stack, port, tmp_path, console_port) as honcho:
        base = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{base}/readyz", timeout=40), honcho.log()
        console = f"http://127.0.0.1:{console_port}"
        assert wait_for_http(f"{console}/healthz", timeout=40), honcho.log()
        assert wait_for_http(f"{console}/tenants", timeout=5, status=401), honcho.log()
        assert wait_until(lambda: _workers_answer(stack.env["CONNECTOR_BROKER_URL"]), 40), (
            honcho.log()
        )

        # (a) a sync through the honcho workers
        synced = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "60")
        assert synced.returncode == 0, synced.stderr + honcho.log()
        summary = json.loads(synced.stdout.strip().splitlines()[-1])
        assert summary["created"] == CUSTOMERS + ORDERS and summary["failed"] == 0, summary
        _check_exactly_one_each(stack)

        # (b) the webhook, registered at the honcho receiver, carries a user's move to IFS
        ensured = stack.cli("webhooks", "ensure", stack.tenant)
        assert ensured.returncode == 0, ensured.stderr
        assert ensured.stdout.split(":")[0] in ("created", "ok") and hook_url in ensured.stdout
        # One webhook per event the connector needs (deal changes, deal and organization
        # deletes), every one pointed at the honcho receiver.
        hooks = stack.pipedrive.list_webhooks()
        assert sorted(f"{w['event_action']}.{w['event_object']}" for w in hooks) == [
            "change.deal",
            "delete.deal",
            "delete.organization",
        ]
        assert {w["subscription_url"] for w in hooks} == {hook_url}
        planned = [
            key
            for key in stack.ifs.keys(customer_order())
            if stack.ifs.get_order(key)["Objstate"] == "Planned"
        ]
        assert planned, "seed 1 has Planned orders"
        order_no = planned[0]
        entry = IdMap(stack.runtime.database).get(stack.tenant, "order", order_no)
        assert entry is not None and entry.pipedrive_id is not None
        deal_id = int(entry.pipedrive_id)

        stack.pipedrive.move_deal(deal_id, stage_id=_released_stage_id(stack))

        released = wait_until(
            lambda: stack.ifs.get_order(order_no)["Objstate"] == "Released", timeout=30
        )
        assert released, f"{stack.pipedrive.delivery_log()[-3:]}\n{honcho.log()}"

        # This simulator's only webhooks are the ones `webhooks ensure` pointed at honcho; its
        # log entry is written once the answer is back, which may be after the IFS change.
        def deliveries() -> list[tuple[str, int | None]]:
            return [(d["entity_id"], d["http_status"]) for d in stack.pipedrive.delivery_log()]

        assert wait_until(lambda: deliveries() == [(str(deal_id), 200)], 15), deliveries()

        # The worker marks the event applied just after the IFS action: wait for it.
        def event_states() -> list[tuple[str, str]]:
            return [(e.action, e.status) for e in _deal_events(stack, deal_id)]

        applied = wait_until(
            lambda: event_states() == [("change", WebhookEventStatus.APPLIED)], timeout=15
        )
        assert applied, event_states()

        # (c) SIGINT to honcho stops every process of the tree, without a SIGKILL
        tree = honcho.leftovers()
        assert len(tree) >= 1 + 5, f"honcho and its five processes: {tree}"
        status = honcho.stop(timeout=30)
        output = honcho.log(tail=20000)
        assert status is not None, "honcho did not exit within 30 s\n" + output
        assert "SIGKILL" not in output, output
        assert wait_until(lambda: not honcho.leftovers(), timeout=5), honcho.leftovers()

    # Beat ran with the schedule of the tenants file (it saves its entries on start and stop).
    with shelve.open(str(schedule_file), flag="r") as saved:
        entries = dict(saved["entries"])
    for job in ("sync", "reconcile-stages"):
        saved_job = entries.get(f"{stack.tenant}:{job}")
        assert saved_job is not None, sorted(entries)
        assert saved_job.schedule == tenant_crontab(schedule), saved_job
