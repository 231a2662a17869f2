"""Replay queues again the job a failed audit row describes, once, through the queue it is given."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from connector import jobs
from connector.replay import Replay
from connector.storage.audit import (
    FAILED,
    IFS_TO_PIPEDRIVE,
    REPLAYED,
    SUPERSEDED,
    Attempt,
    AuditLog,
)
from connector.storage.database import Database
from connector.storage.models import utcnow
from tests.connector.webhooks.support import unique_tenant


class RecordingQueue:
    """An Enqueue that keeps what it was given."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, job: str, kwargs: dict[str, Any]) -> None:
        self.jobs.append((job, kwargs))


@pytest.fixture
def audit(postgres_url: str) -> Any:
    database = Database(postgres_url)
    yield AuditLog(database)
    database.dispose()


def _attempt(tenant: str, key: str, status: str = FAILED, **extra: Any) -> Attempt:
    return Attempt(
        tenant=tenant,
        direction=IFS_TO_PIPEDRIVE,
        entity="order",
        record_key=key,
        status=status,
        error="Pipedrive HTTP 400: Currency" if status == FAILED else None,
        replay_task=jobs.SYNC_ORDER,
        replay_args={"tenant": tenant, "key": key},
        **extra,
    )


def test_a_failed_row_is_queued_again_with_its_arguments_and_marked_replayed(
    audit: AuditLog,
) -> None:
    tenant, queue = unique_tenant("replay"), RecordingQueue()
    row_id = audit.write(_attempt(tenant, "C1"))

    assert Replay(audit, queue).one(row_id) is True

    assert queue.jobs == [(jobs.SYNC_ORDER, {"tenant": tenant, "key": "C1", "replay_of": row_id})]
    row = audit.get(row_id)
    assert row is not None and row.status == REPLAYED


def test_replaying_a_row_twice_queues_its_job_once(audit: AuditLog) -> None:
    tenant, queue = unique_tenant("replay"), RecordingQueue()
    row_id = audit.write(_attempt(tenant, "C1"))
    replays = Replay(audit, queue)

    assert (replays.one(row_id), replays.one(row_id)) == (True, False)
    assert len(queue.jobs) == 1


def test_rows_that_cannot_be_replayed_queue_nothing(audit: AuditLog) -> None:
    tenant, queue = unique_tenant("replay"), RecordingQueue()
    succeeded = audit.write(_attempt(tenant, "C1", status="succeeded"))
    no_job = _attempt(tenant, "C2")
    no_job.replay_task = None
    without_job = audit.write(no_job)
    replays = Replay(audit, queue)

    assert replays.one(succeeded) is False
    assert replays.one(without_job) is False
    assert replays.one(2**31 - 1) is False  # no such row
    assert queue.jobs == []


def test_replay_failed_queues_each_record_whose_newest_attempt_failed(audit: AuditLog) -> None:
    tenant, other, queue = unique_tenant("replay"), unique_tenant("other"), RecordingQueue()
    fixed_since = audit.write(_attempt(tenant, "C1"))
    audit.write(_attempt(tenant, "C1", status="succeeded"))
    still_failed = audit.write(_attempt(tenant, "C2"))
    audit.write(_attempt(other, "C3"))
    replays = Replay(audit, queue)

    assert [row.id for row in replays.latest_failed(tenant)] == [still_failed]
    assert replays.failed(tenant, utcnow() + timedelta(hours=1)) == 0
    assert replays.failed(tenant) == 1
    assert queue.jobs == [
        (jobs.SYNC_ORDER, {"tenant": tenant, "key": "C2", "replay_of": still_failed})
    ]
    assert replays.failed(tenant) == 0  # replayed rows are not failed any more
    row = audit.get(fixed_since)
    assert row is not None and row.status == SUPERSEDED  # fixed by the later success
