"""The replay task run from a real Flower process through its HTTP API, as an operator would."""

from __future__ import annotations

import json
import secrets
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from connector.jobs import REPLAY_FAILED
from connector.pipedrive.provisioning import FieldKeys
from connector.polling import wait_until
from connector.storage.audit import AuditLog
from connector.storage.models import AuditRecord
from connector.storage.tenant_state import DatabaseTenantState
from sandbox.stack import Stack
from sandbox.workers import BIN
from simulators.ifs.schema import customer_order
from simulators.serving import free_port
from tests.fixtures.processes import ProcessTree, wait_for_http

pytestmark = pytest.mark.integration


def _flower(stack: Stack, port: int, credentials: str, folder: Path) -> ProcessTree:
    argv = [
        str(BIN / "celery"),
        "-A",
        "workers.app:celery_app",
        # Celery's own options go before the sub-command; Flower refuses them after it.
        f"--broker={stack.env['CONNECTOR_BROKER_URL']}",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
    ]
    # As deployed (compose, k8s): basic auth from the environment, which also opens the API.
    env = {**stack.env, "FLOWER_BASIC_AUTH": credentials}
    return ProcessTree(argv, env, folder / "flower.log", stop_signal=signal.SIGTERM)


def _rows_replaying(stack: Stack, audit_id: int) -> list[AuditRecord]:
    with stack.runtime.database.session() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.replay_of == audit_id)))


def _deals_of(stack: Stack, order_no: str) -> list[dict[str, Any]]:
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "field_keys")
    assert value is not None
    key = FieldKeys.from_json(value).deal["ifs_order_no"]
    return [
        d for d in stack.pipedrive.all_records("deal") if d["custom_fields"].get(key) == order_no
    ]


def _finished(base: str, auth: tuple[str, str], task_id: str) -> dict[str, Any] | None:
    """Flower's record of a task once it succeeded (None before, or if Flower missed it)."""
    answer = requests.get(f"{base}/api/task/info/{task_id}", auth=auth, timeout=10)
    info: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
    return info if info.get("state") == "SUCCESS" else None


def test_replay_failed_sent_through_flowers_api_replays_the_fixed_record_once(
    stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=1)
    bad = stack.ifs.keys(customer_order())[0]
    stack.ifs.edit_order(bad, CurrencyCode="EURO")  # Pipedrive answers 400 for this
    stack.start_workers(count=1, concurrency=2)

    synced = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "60")
    summary = json.loads(synced.stdout.strip().splitlines()[-1])
    assert synced.returncode == 2 and summary["failed"] == 1, synced.stderr + stack.worker_logs()
    (failed,) = AuditLog(stack.runtime.database).list(tenant=stack.tenant, status="failed")
    assert failed.record_key == bad and _deals_of(stack, bad) == []

    port = free_port()
    auth = ("ops", secrets.token_urlsafe(12))
    credentials = ":".join(auth)
    base = f"http://127.0.0.1:{port}"
    send = f"{base}/api/task/send-task/{REPLAY_FAILED}"
    body = {"kwargs": {"tenant": stack.tenant}}
    with _flower(stack, port, credentials, tmp_path) as flower:
        assert wait_for_http(f"{base}/healthcheck", timeout=30, auth=auth), flower.log()

        refused = requests.post(send, json=body, timeout=10)
        assert refused.status_code == 401, refused.text
        assert _rows_replaying(stack, failed.id) == []

        # Flower follows worker events from a thread of its own that may still be
        # connecting: an empty replay (nothing failed after `since`) shows it listens.
        nothing = {"kwargs": {"tenant": stack.tenant, "since": "2999-01-01T00:00:00"}}
        warm_up = None
        for _ in range(5):
            posted = requests.post(send, json=nothing, auth=auth, timeout=10)
            assert posted.status_code == 200, posted.text + flower.log()
            warm_up = wait_until(partial(_finished, base, auth, posted.json()["task-id"]), 3)
            if warm_up is not None:
                break
        assert warm_up is not None and warm_up["result"] == "0", flower.log()
        assert _rows_replaying(stack, failed.id) == []

        stack.ifs.edit_order(bad, CurrencyCode="EUR")
        sent = requests.post(send, json=body, auth=auth, timeout=10)
        assert sent.status_code == 200, sent.text + flower.log()
        task_id = sent.json()["task-id"]

        replayed = wait_until(
            lambda: [r for r in _rows_replaying(stack, failed.id) if r.status == "succeeded"],
            timeout=30,
        )
        assert replayed, f"{_rows_replaying(stack, failed.id)}\n{stack.worker_logs()}"
        assert [(r.record_key, r.operation) for r in replayed] == [(bad, "create")]

        # Flower's task list (the UI's Tasks page) shows the replay task and its count.
        info = wait_until(lambda: _finished(base, auth, task_id), timeout=15)
        assert info is not None, flower.log()
        assert info["name"] == REPLAY_FAILED and info["result"] == "1", info
        assert flower.running(), flower.log()

    original = AuditLog(stack.runtime.database).get(failed.id)
    assert original is not None and original.status == "replayed"
    assert len(_deals_of(stack, bad)) == 1
    assert len(stack.pipedrive.all_records("deal")) == 6
    assert AuditLog(stack.runtime.database).list(tenant=stack.tenant, status="failed") == []
    assert not flower.leftovers(), "Flower left processes behind"
