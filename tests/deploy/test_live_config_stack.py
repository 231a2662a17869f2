"""A running deployment (honcho: receiver under gunicorn, two workers, beat) follows changes to
the tenants file and the vault without a restart, and every role reports a broken file."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from connector.polling import wait_until
from connector.storage.audit import FAILED, SKIPPED, SUCCEEDED
from connector.storage.idmap import IdMap
from connector.storage.models import AuditRecord
from connector.tenants import DEFAULT_STAGE_MAP
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from simulators.serving import free_port
from tests.connector.webhooks.support import encode, events_of, v2_deal_event
from tests.deploy.test_procfile_stack import WORKERS, _honcho, _released_stage_id, _workers_answer
from tests.fixtures.processes import wait_for_http

# Both run the Procfile, whose workers have fixed names (worker1@host, worker2@host) on the
# shared broker: under pytest-xdist they run one after the other, in one test process.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("procfile")]

EVERY_MINUTE = "* * * * *"
# Beat runs a `* * * * *` entry at the next minute; each process checks every 5 s.
SCHEDULED_WITHIN_S = 100
POOL_PROCESSES = 2 * len(WORKERS)  # the Procfile's workers run --concurrency=2
# The stage map as an operator first wrote it: moving a deal to Released changes nothing.
WRONG_STAGE_MAP = [
    rule.model_dump(exclude_none=True, exclude={"to_ifs"} if rule.stage == "Released" else None)
    for rule in DEFAULT_STAGE_MAP
]


def _plans(stack: Stack, tenant: str, statuses: tuple[str, ...], after_id: int = 0) -> list[int]:
    with stack.runtime.database.session() as session:
        return list(
            session.scalars(
                select(AuditRecord.id).where(
                    AuditRecord.tenant == tenant,
                    AuditRecord.record_key == "*",
                    AuditRecord.operation == "plan",
                    AuditRecord.status.in_(statuses),
                    AuditRecord.id > after_id,
                )
            )
        )


def _failed(stack: Stack, tenant: str, after_id: int) -> list[str]:
    """Errors of the tenant's failed rows (plans or records) written after `after_id`."""
    with stack.runtime.database.session() as session:
        return [
            str(error)
            for error in session.scalars(
                select(AuditRecord.error).where(
                    AuditRecord.tenant == tenant,
                    AuditRecord.status == FAILED,
                    AuditRecord.id > after_id,
                )
            )
        ]


def _newest_id(stack: Stack) -> int:
    with stack.runtime.database.session() as session:
        return int(session.scalar(select(func.max(AuditRecord.id))) or 0)


def _write(stack: Stack, tenants: dict[str, dict[str, Any]]) -> None:
    stack.tenants_file.write_text(yaml.safe_dump({"tenants": tenants}))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _reload_errors(metrics_dir: Path, tenant: str) -> float:
    """mlc_config_reload_errors_total{tenant} as the processes of one role wrote it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return registry.get_sample_value("mlc_config_reload_errors_total", {"tenant": tenant}) or 0.0


def _stage_event(deal_id: int, stage_id: int, moment: datetime) -> bytes:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return encode(v2_deal_event(deal_id, stage_id=stage_id, previous_stage_id=1, timestamp=stamp))


def test_tenants_and_credentials_change_under_a_running_deployment(
    stack_factory, tmp_path: Path
) -> None:
    stack = stack_factory()
    other = stack_factory()  # only its simulators and tenant section are used
    a, b = stack.tenant, other.tenant
    stack.ifs.seed(customers=2, orders=2, seed=3)
    other.ifs.seed(customers=2, orders=2, seed=4)
    a_body = {**stack.tenant_config, "schedule": EVERY_MINUTE}
    b_body = {**other.tenant_config, "schedule": EVERY_MINUTE}
    _write(stack, {a: {**a_body, "stage_map": WRONG_STAGE_MAP}})
    vault = stack.runtime.vault  # the deployment's keys: other's stack has its own
    vault.set(a, "webhook", "basic_user", "hook-a")
    vault.set(a, "webhook", "basic_password", "pw-a")
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    with _honcho(stack, port, tmp_path, free_port()) as honcho:
        assert wait_for_http(f"{base}/readyz", timeout=40), honcho.log()
        assert wait_until(lambda: _workers_answer(stack.env["CONNECTOR_BROKER_URL"]), 40), (
            honcho.log()
        )
        processes = sorted(honcho.leftovers())
        hook_b = f"{base}/webhooks/pipedrive/{b}"
        event = encode(v2_deal_event(7, entity="organization"))
        auth_b = _basic("hook-b", "pw-b")
        assert requests.post(hook_b, data=event, headers={"Authorization": auth_b}).status_code == (
            401
        )

        # (1) a second tenant added to the file (and its secrets to the vault) is served
        vault.set(b, "ifs", "client_secret", next(iter(other.ifs.settings.clients.values())))
        vault.set(b, "pipedrive", "api_token", other.pipedrive.settings.api_tokens[0])
        vault.set(b, "webhook", "basic_user", "hook-b")
        vault.set(b, "webhook", "basic_password", "pw-b")
        _write(stack, {a: {**a_body, "stage_map": WRONG_STAGE_MAP}, b: b_body})

        def accepted() -> bool:
            answer = requests.post(
                hook_b,
                data=encode(v2_deal_event(8, entity="organization")),
                headers={"Authorization": auth_b},
                timeout=5,
            )
            return answer.status_code == 200

        assert wait_until(accepted, timeout=30, interval=1.0), honcho.log()
        assert wait_until(lambda: _plans(stack, b, (SUCCEEDED, SKIPPED)), SCHEDULED_WITHIN_S), (
            honcho.log()
        )
        assert wait_until(lambda: len(other.pipedrive.all_records("organization")) == 2, 30)

        # A deal stage webhook under the wrong stage map changes nothing in IFS.
        order_no = stack.ifs.keys(customer_order())[0]
        assert wait_until(lambda: IdMap(stack.runtime.database).get(a, "order", order_no), 60)
        entry = IdMap(stack.runtime.database).get(a, "order", order_no)
        assert entry is not None and entry.pipedrive_id is not None
        stack.ifs.edit_order(order_no, Objstate="Planned")
        hook_a = f"{base}/webhooks/pipedrive/{a}"
        auth_a = {"Authorization": _basic("hook-a", "pw-a")}
        released, now = _released_stage_id(stack), datetime.now(UTC)
        first = _stage_event(int(entry.pipedrive_id), released, now - timedelta(seconds=10))
        assert requests.post(hook_a, data=first, headers=auth_a, timeout=5).status_code == 200

        def pushes() -> list[tuple[str, str | None]]:
            # The deliveries posted here (beat's reconciliation stores events of its own).
            events = events_of(stack.runtime, a)
            return [(event.status, event.detail) for event in events if event.action == "change"]

        assert wait_until(lambda: [s for s, _ in pushes()] == ["ignored"], 30), pushes()
        assert "no IFS change mapped for stage 'Released'" in str(pushes()[0][1])
        assert stack.ifs.get_order(order_no)["Objstate"] == "Planned"

        # (2) a typo in B's section and A's stage map corrected in the same write: every role
        # (each pool process, beat, the receiver) reports B, the key and what was expected,
        # in /readyz, `status` and its metric; A's correction takes effect all the same, and
        # A keeps syncing on its schedule
        _write(stack, {a: a_body, b: {**b_body, "schedul": EVERY_MINUTE}})

        def readiness() -> dict[str, Any]:
            answer: dict[str, Any] = requests.get(f"{base}/readyz", timeout=5).json()
            return answer

        def reporting_roles() -> list[str]:
            reports = readiness().get("tenants_file_reports", [])
            typo = f"tenant '{b}': key 'schedul'"
            return sorted(r["role"] for r in reports if any(typo in m for m in r["problems"]))

        every_role = sorted(["beat", "receiver", *["worker"] * POOL_PROCESSES])
        assert wait_until(lambda: reporting_roles() == every_role, 30), readiness()
        ready = readiness()
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        assert ready["tenants_file"] == "invalid"
        (problem, _note) = ready["tenants_file_problems"]
        assert f"tenant '{b}': key 'schedul': unknown key (did you mean 'schedule'?)" in problem
        shown = stack.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert f"! tenants file: tenant '{b}': key 'schedul': unknown key" in shown.stdout
        assert "expected one of:" in shown.stdout and f"tenant {a}" in shown.stdout
        reported = [line for line in shown.stdout.splitlines() if "also reported by" in line]
        assert len(reported) == 1 and f"tenant '{b}': key 'schedul'" in reported[0], shown.stdout
        for role in ("beat on", "receiver on", "worker on"):
            assert role in reported[0], reported
        metrics_dirs = tmp_path / "var" / "prometheus"
        for role in ("worker1", "worker2", "beat", "receiver"):
            assert _reload_errors(metrics_dirs / role, b) > 0, role

        # The next stage webhook of the deal follows the corrected map: the order is released.
        second = _stage_event(int(entry.pipedrive_id), released, now)
        assert requests.post(hook_a, data=second, headers=auth_a, timeout=5).status_code == 200
        assert wait_until(lambda: stack.ifs.get_order(order_no)["Objstate"] == "Released", 30), (
            pushes()
        )
        since = _newest_id(stack)
        assert wait_until(lambda: _plans(stack, a, (SUCCEEDED, SKIPPED), since), 90), honcho.log()

        # (3) a wrong Pipedrive token fails A's sync; fixing it with `credentials set` while
        # the workers run makes the replay succeed
        _write(stack, {a: a_body, b: b_body})
        wrong = stack.cli("credentials", "set", a, "pipedrive", "api_token", input="wrong-token")
        assert wrong.returncode == 0, wrong.stderr
        since = _newest_id(stack)
        customer = stack.ifs.keys(stack.ifs.customer_type)[0]
        stack.ifs.edit_customer(customer, Name="Renamed Ltd")
        assert wait_until(lambda: _failed(stack, a, since), 90), honcho.log()
        good = stack.pipedrive.settings.api_tokens[0]
        fixed = stack.cli("credentials", "set", a, "pipedrive", "api_token", input=good)
        assert fixed.returncode == 0, fixed.stderr
        replayed = stack.cli("replay", "--failed", "--tenant", a, "--wait", "--timeout", "90")
        assert replayed.returncode == 0, replayed.stderr + replayed.stdout

        def renamed() -> bool:
            names = [org["name"] for org in stack.pipedrive.all_records("organization")]
            return "Renamed Ltd" in names

        assert wait_until(renamed, 90), honcho.log()

        assert wait_until(lambda: readiness().get("tenants_file") == "ok", 30), readiness()
        # Every process of the deployment as it started still runs (processes that were
        # still starting when they were first listed may have joined since).
        assert set(processes) <= set(honcho.leftovers()), "no process was restarted"
        json.dumps(ready)  # the detail is plain JSON
