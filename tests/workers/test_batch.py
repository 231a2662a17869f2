"""A batch of released records (RecordBatchTask): each record ends on its own, exactly once.

The batch runs through Celery's eager `apply()` (its real tracer, no broker) on the real
database: the work items are stored and released as the dispatcher does, and the message is
the dispatcher's own (`connector.dispatch.dispatcher.message`). Each record's work is scripted
to end as a real sync ends: its audit row and its item's end in one transaction, or a
"retrying" row and a TransientError.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, signals
from prometheus_client import REGISTRY
from sqlalchemy import select

from connector import jobs
from connector.dispatch.dispatcher import message
from connector.errors import TransientError
from connector.ratelimit import RateLimited
from connector.runtime import Runtime
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, RETRYING, SUCCEEDED, Attempt, AuditLog
from connector.storage.models import WorkItemRecord, utcnow
from connector.storage.work_items import WorkItems
from tests.connector.webhooks.support import unique_tenant
from workers.base import RecordBatchTask

app = Celery("test-batch", broker="memory://", set_as_current=False)
RunOne = Callable[[str, str, int, int, dict[str, Any]], str]


@pytest.fixture
def retries() -> Iterator[list[Any]]:
    """Every Celery retry scheduled during the test (a batch never retries as a message)."""
    seen: list[Any] = []

    def on_retry(reason: Any, **_: Any) -> None:
        seen.append(reason)

    signals.task_retry.connect(on_retry, weak=False)
    yield seen
    signals.task_retry.disconnect(on_retry)


def _batch_task(run_one: RunOne) -> Any:
    @app.task(bind=True, base=RecordBatchTask, name=f"test.batch.{uuid.uuid4().hex[:8]}")
    def batch(self: RecordBatchTask, tenant: str, records: list[dict[str, Any]]) -> Any:
        return self.run_records(tenant, records, run_one)

    return batch


def _released(runtime: Runtime, tenant: str, keys: list[str]) -> dict[str, Any]:
    """The dispatcher's message for these customers of `tenant`, stored and released."""
    items = WorkItems(runtime.database)
    page = [{"entity": "customer", "tenant": tenant, "key": k, "run_id": "run"} for k in keys]
    items.add(tenant, "run", jobs.SYNC_CUSTOMER, page)
    job, kwargs = message(items.release({tenant: len(keys)})[tenant])
    assert job == jobs.SYNC_RECORDS and len(kwargs["records"]) == len(keys)
    return kwargs


def _row(tenant: str, key: str, status: str, attempt: int) -> Attempt:
    return Attempt(tenant, IFS_TO_PIPEDRIVE, "customer", key, status=status, attempt=attempt)


def _synced(name: str, tenant: str, outcome: str) -> float:
    labels = {"tenant": tenant, "entity": "customer", "outcome": outcome}
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_with_a_success_a_transient_error_a_failure_and_a_crash_ends_each_on_its_own(
    runtime: Runtime, retries: list[Any]
) -> None:
    tenant = unique_tenant("batch")
    audit, items = AuditLog(runtime.database), WorkItems(runtime.database)
    ran: list[str] = []

    def run_one(entity: str, key: str, item: int, attempt: int, options: dict[str, Any]) -> str:
        ran.append(key)
        if key == "C-transient":  # a remote's 503: its row says retrying, its item goes back
            audit_id = audit.write(_row(tenant, key, RETRYING, attempt))
            raise TransientError("pipedrive answered 503", None, audit_id=audit_id)
        if key == "C-crash":
            raise ValueError("a bug in one record")
        status = FAILED if key == "C-failed" else SUCCEEDED

        def end(session: Any) -> None:
            items.finish(item, session=session)
            audit.write(_row(tenant, key, status, attempt), session=session)

        runtime.database.transaction(end)
        return "failed" if status == FAILED else "created"

    keys = ["C-ok1", "C-transient", "C-failed", "C-crash", "C-ok2"]
    kwargs = _released(runtime, tenant, keys)
    batch = _batch_task(run_one)

    assert batch.apply(kwargs=kwargs).get() == {"created": 2, "retrying": 1, "failed": 2}

    assert ran == keys  # each once, in order, whatever the others did
    assert retries == []  # the message itself is never retried
    rows = {row.record_key: row for row in audit.list(tenant=tenant)}
    assert {key: row.status for key, row in rows.items()} == {
        "C-ok1": SUCCEEDED,
        "C-transient": RETRYING,
        "C-failed": FAILED,
        "C-crash": FAILED,
        "C-ok2": SUCCEEDED,
    }
    crash = rows["C-crash"]
    assert crash.error is not None and "ValueError: a bug in one record" in crash.error
    assert crash.replay_args == {"tenant": tenant, "key": "C-crash"}
    # Only the transient one waits in the store, its retry counted and due later.
    assert items.backlog(tenant) == (1, 0)
    with runtime.database.session() as session:
        (left,) = session.scalars(select(WorkItemRecord).where(WorkItemRecord.tenant == tenant))
        assert (left.record_key, left.attempts) == ("C-transient", 1)
        assert left.not_before is not None and left.not_before > utcnow()
    name = "mlc_records_synced_total"
    assert _synced(name, tenant, "created") == 2 and _synced(name, tenant, "failed") == 2

    # The same message again (redelivered after its worker died): nothing of it is released
    # any more, so no record runs twice.
    ran.clear()
    assert batch.apply(kwargs=kwargs).get() == {}
    assert ran == []


def test_a_record_without_tokens_gives_back_the_rest_of_its_batch_unrun_and_uncounted(
    runtime: Runtime, retries: list[Any]
) -> None:
    tenant = unique_tenant("batch")
    audit, items = AuditLog(runtime.database), WorkItems(runtime.database)
    ran: list[str] = []

    def run_one(entity: str, key: str, item: int, attempt: int, options: dict[str, Any]) -> str:
        ran.append(key)
        if key == "C2":  # the engine wraps the limiter's refusal in the attempt's error
            audit_id = audit.write(_row(tenant, key, RETRYING, attempt))
            limited = RateLimited(f"pipedrive:{tenant}:burst", 0.8)
            raise TransientError(str(limited), 0.8, audit_id=audit_id) from limited
        runtime.database.transaction(lambda session: items.finish(item, session=session))
        return "created"

    kwargs = _released(runtime, tenant, ["C1", "C2", "C3", "C4"])

    assert _batch_task(run_one).apply(kwargs=kwargs).get() == {"created": 1, "retrying": 3}

    # The batch stops at the first record the budget could not take: it never waits it out.
    assert ran == ["C1", "C2"] and retries == []
    with runtime.database.session() as session:
        left = list(session.scalars(select(WorkItemRecord).where(WorkItemRecord.tenant == tenant)))
    assert sorted(row.record_key for row in left) == ["C2", "C3", "C4"]
    # Waiting again, due after the limiter's wait, and not counted as attempts (pacing).
    assert all(row.released_at is None and row.attempts == 0 for row in left)
    assert all(row.not_before is not None and row.not_before > utcnow() for row in left)
