"""The task base classes: transient errors retry with the one policy and the error's own wait,
exhausted retries leave a failed row, and each run that ends is observed exactly once.

Tasks run through Celery's own eager `apply()` (its real tracer and retry machinery, no
broker); the stage push runs against the IFS simulator and the real database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from prometheus_client import REGISTRY
from sqlalchemy import select

from connector import jobs
from connector.errors import RecordError, RemoteError, TransientError
from connector.metrics import SYNC_OUTCOMES
from connector.ratelimit import RateLimited, interactive
from connector.runtime import Runtime
from connector.storage.audit import DEFERRED, FAILED, IFS_TO_PIPEDRIVE, RETRYING, Attempt, AuditLog
from connector.storage.idmap import IdMap
from connector.storage.models import AuditRecord, WebhookEvent
from connector.storage.tenant_state import DatabaseTenantState
from connector.webhooks.events import parse_payload
from tests.connector.webhooks.support import (
    INTEGRATION_USER,
    make_runtime,
    tenant_body,
    unique_tenant,
    v2_deal_event,
)
from workers.app import VISIBILITY_TIMEOUT_S
from workers.base import (
    MAX_COUNTDOWN_S,
    MAX_RETRIES,
    TASK_RETRY_POLICY,
    ConnectorTask,
    RecordSyncTask,
)
from workers.runtime import set_runtime

STAGE_OUTCOMES = ("applied", "ignored", "skipped", "failed")
app = Celery("test-task-base", broker="memory://", set_as_current=False)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _name(what: str) -> str:
    return f"test.{what}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def countdowns() -> Iterator[list[float]]:
    """The countdown of every retry Celery schedules during the test."""
    seen: list[float] = []

    def on_retry(reason: Any, **_: Any) -> None:
        seen.append(float(reason.when))

    signals.task_retry.connect(on_retry, weak=False)
    yield seen
    signals.task_retry.disconnect(on_retry)


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("pipedrive:acme:burst", 42.5),
        RemoteError("pipedrive", "slow down", status=429, retryable=True, retry_after_s=42.5),
    ],
    ids=["limiter", "remote"],
)
def test_a_retry_waits_at_least_the_wait_the_error_asks_for(
    error: Exception, countdowns: list[float]
) -> None:
    @app.task(bind=True, base=ConnectorTask, name=_name("limited"))
    def limited(self: ConnectorTask, tenant: str) -> str:
        if self.attempt == 1:
            raise error
        return "done"

    assert limited.apply(kwargs={"tenant": "acme"}).get() == "done"
    assert len(countdowns) == 1 and countdowns[0] >= 42.5


def test_without_a_hint_the_countdown_is_the_policys_full_jitter(countdowns: list[float]) -> None:
    @app.task(bind=True, base=ConnectorTask, name=_name("flaky"))
    def flaky(self: ConnectorTask, tenant: str) -> str:
        if self.attempt <= 3:
            raise TransientError("lock busy")
        return "done"

    assert flaky.apply(kwargs={"tenant": "acme"}).get() == "done"
    assert len(countdowns) == 3
    for retry, countdown in enumerate(countdowns):
        assert 0 <= countdown <= min(TASK_RETRY_POLICY.cap_s, TASK_RETRY_POLICY.base_s * 2**retry)


def test_a_final_error_is_not_retried(countdowns: list[float]) -> None:
    @app.task(bind=True, base=ConnectorTask, name=_name("broken"))
    def broken(self: ConnectorTask, tenant: str) -> str:
        raise RecordError("CurrencyCode is missing")

    with pytest.raises(RecordError):
        broken.apply(kwargs={"tenant": "acme"}, throw=True)
    assert countdowns == []


def test_interactive_jobs_run_inside_interactive_work_and_bulk_jobs_do_not() -> None:
    seen: list[tuple[str, bool]] = []

    def body(self: ConnectorTask, tenant: str, **_: Any) -> str:
        seen.append((self.name, interactive.get()))
        return "done"

    # Named as the jobs: the routing rule (connector.jobs.is_interactive) decides.
    replay = app.task(bind=True, base=ConnectorTask, name=jobs.REPLAY)(body)
    record = app.task(bind=True, base=ConnectorTask, name=jobs.SYNC_ORDER)(body)
    assert replay.apply(kwargs={"tenant": "acme"}).get() == "done"
    assert record.apply(kwargs={"tenant": "acme", "key": "O1", "replay_of": 7}).get() == "done"
    assert record.apply(kwargs={"tenant": "acme", "key": "O1"}).get() == "done"
    assert seen == [(jobs.REPLAY, True), (jobs.SYNC_ORDER, True), (jobs.SYNC_ORDER, False)]
    assert interactive.get() is False


def test_a_retry_can_carry_what_is_left_to_do(countdowns: list[float]) -> None:
    seen: list[str] = []

    @app.task(bind=True, base=ConnectorTask, name=_name("plan"))
    def plan(self: ConnectorTask, tenant: str, entity: str) -> str:
        seen.append(entity)
        if self.attempt == 1:
            self.retry_transient(TransientError("busy"), kwargs={"tenant": tenant, "entity": "b"})
        return "done"

    assert plan.apply(kwargs={"tenant": "acme", "entity": "a,b"}).get() == "done"
    assert seen == ["a,b", "b"] and len(countdowns) == 1


def test_exhausted_retries_mark_the_retrying_row_failed_and_count_one_failure(
    runtime: Runtime, countdowns: list[float]
) -> None:
    tenant, audit = unique_tenant("base"), AuditLog(runtime.database)

    @app.task(bind=True, base=RecordSyncTask, entity="customer", name=_name("sync"))
    def sync(self: RecordSyncTask, tenant: str, key: str) -> str:
        audit_id = audit.write(
            Attempt(
                tenant=tenant,
                direction=IFS_TO_PIPEDRIVE,
                entity="customer",
                record_key=key,
                status=RETRYING,
                attempt=self.attempt,
                replay_task=self.name,
                replay_args={"tenant": tenant, "key": key},
            )
        )
        raise TransientError("lock 'record:…' not acquired", 0.5, audit_id=audit_id)

    assert sync.apply(kwargs={"tenant": tenant, "key": "C1"}).get() == "failed"

    # The identical retrying attempts share one row, which ends failed.
    (row,) = audit.list(tenant=tenant)
    assert (row.attempt, row.occurrences, row.status) == (MAX_RETRIES + 1, MAX_RETRIES + 1, FAILED)
    assert len(countdowns) == MAX_RETRIES and min(countdowns) >= 0.5
    assert [failed.id for failed in audit.latest_failed(tenant)] == [row.id]
    name = "mlc_records_synced_total"
    assert _value(name, tenant=tenant, entity="customer", outcome="failed") == 1
    counted = [_value(name, tenant=tenant, entity="customer", outcome=o) for o in SYNC_OUTCOMES]
    assert sum(counted) == 1


def test_a_countdown_never_exceeds_the_brokers_visibility_timeout(countdowns: list[float]) -> None:
    @app.task(bind=True, base=ConnectorTask, name=_name("slow"))
    def slow(self: ConnectorTask, tenant: str) -> str:
        if self.attempt == 1:
            raise RateLimited("ifs:acme:hour", MAX_COUNTDOWN_S - 1)
        return "done"

    assert slow.apply(kwargs={"tenant": "acme"}).get() == "done"
    assert MAX_COUNTDOWN_S - 1 <= countdowns[0] <= MAX_COUNTDOWN_S < VISIBILITY_TIMEOUT_S


def test_a_daily_budget_wait_defers_the_record_to_the_next_plan_instead_of_sleeping(
    runtime: Runtime, countdowns: list[float]
) -> None:
    tenant, audit = unique_tenant("base"), AuditLog(runtime.database)

    @app.task(bind=True, base=RecordSyncTask, entity="customer", name=_name("budget"))
    def sync(self: RecordSyncTask, tenant: str, key: str) -> str:
        audit_id = audit.write(
            Attempt(tenant, IFS_TO_PIPEDRIVE, "customer", key, status=RETRYING, error="budget")
        )
        error = RateLimited(f"pipedrive:{tenant}:daily", 86_400)
        raise TransientError(str(error), error.retry_after_s, audit_id=audit_id)

    assert sync.apply(kwargs={"tenant": tenant, "key": "C1"}).get() == DEFERRED

    assert countdowns == []  # no message sleeps for a day
    (row,) = audit.list(tenant=tenant)
    assert row.status == DEFERRED and "next scheduled plan" in (row.error or "")
    assert audit.latest_failed(tenant) == []
    # Counted as deferred, not as a failure (alerts fire on failed).
    name = "mlc_records_synced_total"
    assert _value(name, tenant=tenant, entity="customer", outcome="deferred") == 1
    assert _value(name, tenant=tenant, entity="customer", outcome="failed") == 0


# -- the stage push metric ------------------------------------------------------------------

STAGES = {"Planned": 1, "Released": 2, "Reserved": 3, "Blocked": 6}
DEAL = 801


@pytest.fixture
def push_runtime(postgres_url: str, ifs_sim: Any) -> Iterator[tuple[Runtime, str, str]]:
    """A tenant on the IFS simulator with one Planned order linked to deal DEAL."""
    tenant = unique_tenant("metric")
    body = tenant_body(
        ifs_url=ifs_sim.url, namespace=ifs_sim.namespace, client_id=ifs_sim.client_id
    )
    runtime = make_runtime(postgres_url, {tenant: body})
    runtime.vault.set(tenant, "ifs", "client_secret", ifs_sim.client_secret)
    DatabaseTenantState(runtime.database).put(
        tenant, "pipeline", {"pipeline_id": 1, "stage_ids": STAGES}
    )
    order = ifs_sim.state.insert_order({"Objstate": "Planned", "Cf_Crm_Stage": None})
    IdMap(runtime.database).save(tenant, "order", order["OrderNo"], pipedrive_id=DEAL)
    set_runtime(runtime)
    yield runtime, tenant, str(order["OrderNo"])
    set_runtime(None)
    runtime.close()


def _store(runtime: Runtime, tenant: str, payload: dict[str, Any]) -> int:
    event = parse_payload(payload)
    with runtime.database.session() as session:
        row = WebhookEvent(
            tenant=tenant,
            event_id=event.event_id,
            entity=event.entity,
            entity_id=event.entity_id,
            action=event.action,
            change_source=event.change_source,
            user_id=event.user_id,
            event_time=event.timestamp,
            payload=payload,
            status="enqueued",
        )
        session.add(row)
        session.flush()
        return row.id


def _stage_pushes(tenant: str) -> dict[str, float]:
    counts = {
        o: _value("mlc_stage_push_seconds_count", tenant=tenant, outcome=o) for o in STAGE_OUTCOMES
    }
    return {outcome: count for outcome, count in counts.items() if count}


def test_one_applied_stage_push_observes_mlc_stage_push_seconds_exactly_once(
    push_runtime: tuple[Runtime, str, str], ifs_sim: Any
) -> None:
    from workers.tasks import push_stage_to_ifs

    runtime, tenant, order_no = push_runtime
    row_id = _store(runtime, tenant, v2_deal_event(DEAL, stage_id=2, previous_stage_id=1))

    result = push_stage_to_ifs.apply(kwargs={"tenant": tenant, "webhook_event_id": row_id})

    assert result.get() == "applied"
    assert ifs_sim.state.get_order(order_no)["Objstate"] == "Released"
    assert _stage_pushes(tenant) == {"applied": 1}


def test_an_ignored_stage_push_is_observed_once_as_ignored(
    push_runtime: tuple[Runtime, str, str],
) -> None:
    from workers.tasks import push_stage_to_ifs

    runtime, tenant, _ = push_runtime
    echo = v2_deal_event(DEAL, stage_id=2, change_source="api", user_id=INTEGRATION_USER)
    row_id = _store(runtime, tenant, echo)

    result = push_stage_to_ifs.apply(kwargs={"tenant": tenant, "webhook_event_id": row_id})

    assert result.get() == "ignored"
    assert _stage_pushes(tenant) == {"ignored": 1}
    with runtime.database.session() as session:
        statuses = session.scalars(select(AuditRecord.status).where(AuditRecord.tenant == tenant))
        assert list(statuses) == ["skipped"]


def _database_down() -> Exception:
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("connection to server at 127.0.0.1 failed: Connection refused")
    )


def test_a_lost_database_connection_is_retried_not_final(countdowns: list[float]) -> None:
    @app.task(bind=True, base=ConnectorTask, name=_name("db-blip"))
    def blip(self: ConnectorTask, tenant: str) -> str:
        if self.attempt < 3:
            raise _database_down()
        return "done"

    assert blip.apply(kwargs={"tenant": "acme"}).get() == "done"
    assert len(countdowns) == 2


def test_no_retry_left_after_a_lost_connection_leaves_a_failed_row_for_replay(
    runtime: Runtime, countdowns: list[float]
) -> None:
    import redis.exceptions

    tenant, audit = unique_tenant("base"), AuditLog(runtime.database)

    @app.task(bind=True, base=RecordSyncTask, entity="order", name=_name("redis-gone"))
    def sync(self: RecordSyncTask, tenant: str, key: str, **options: Any) -> str:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    kwargs = {"tenant": tenant, "key": "C1000000007", "snapshot": {"etag": "x"}, "run_id": "r1"}
    assert sync.apply(kwargs=kwargs).get() == "failed"
    assert len(countdowns) == MAX_RETRIES
    (row,) = audit.list(tenant=tenant)
    assert (row.status, row.entity, row.record_key, row.correlation_id) == (
        FAILED,
        "order",
        "C1000000007",
        "r1",
    )
    assert "ConnectionError" in (row.error or "")
    assert row.replay_task == sync.name
    assert row.replay_args == {"tenant": tenant, "key": "C1000000007"}


def test_an_outcome_the_database_cannot_take_sends_the_message_back_to_the_queue(
    monkeypatch: pytest.MonkeyPatch, countdowns: list[float]
) -> None:
    import workers.base

    # A database that refuses connections (nothing listens on port 9 of this machine).
    down = make_runtime("postgresql+psycopg2://postgres@127.0.0.1:9/none", {})
    set_runtime(down)
    monkeypatch.setattr(workers.base, "REQUEUE_PAUSE_S", 0.0)
    try:

        @app.task(bind=True, base=RecordSyncTask, entity="order", name=_name("db-gone"))
        def sync(self: RecordSyncTask, tenant: str, key: str) -> str:
            raise _database_down()

        result = sync.apply(kwargs={"tenant": "acme", "key": "C1"})
        assert result.state == "REJECTED", result.state
        assert len(countdowns) == MAX_RETRIES
    finally:
        set_runtime(None)
        down.close()


def test_a_sweep_during_a_database_outage_logs_one_line_and_is_not_a_task_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from workers.tasks import sweep_webhook_events

    # A database that refuses connections (nothing listens on port 9 of this machine).
    tenant = unique_tenant("sweep")
    body = tenant_body(ifs_url="http://127.0.0.1:9", namespace="ns", client_id="c")
    down = make_runtime("postgresql+psycopg2://postgres@127.0.0.1:9/none", {tenant: body})
    set_runtime(down)
    try:
        result = sweep_webhook_events.apply()
        assert result.state == "SUCCESS", result.state
        assert "OperationalError" in result.get()["skipped"]
        (line,) = [r for r in caplog.records if "sweep of webhook events skipped" in r.message]
        assert line.exc_info is None  # one line, no traceback
    finally:
        set_runtime(None)
        down.close()
