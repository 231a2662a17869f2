"""The audit log: one row per attempt, the failed rows still waiting, marking replays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.storage.audit import (
    FAILED,
    IFS_TO_PIPEDRIVE,
    REPLAYED,
    SKIPPED,
    SUCCEEDED,
    Attempt,
    AuditLog,
)
from connector.storage.models import utcnow


def _attempt(tenant: str, key: str, status: str = FAILED, **fields) -> Attempt:
    fields.setdefault("replay_task", "ml_connector.sync_order")
    fields.setdefault("replay_args", {"tenant": tenant, "key": key})
    return Attempt(tenant, IFS_TO_PIPEDRIVE, "order", key, status=status, **fields)


def test_an_attempt_that_returns_writes_a_timed_succeeded_row(database, tenant):
    log = AuditLog(database)

    with log.attempt(_attempt(tenant, "O-1", SUCCEEDED)) as attempt:
        attempt.response_summary = {"pipedrive_id": 3}

    row = log.get(attempt.audit_id)
    assert row is not None and row.status == SUCCEEDED and row.error is None
    assert row.response_summary == {"pipedrive_id": 3}
    assert row.duration_ms is not None and row.finished_at is not None


def test_an_attempt_that_raises_writes_a_failed_row_and_the_error_propagates(database, tenant):
    log = AuditLog(database)
    attempt = _attempt(tenant, "O-1", SUCCEEDED)

    with pytest.raises(ValueError, match="boom"), log.attempt(attempt):
        raise ValueError("boom")

    row = log.get(attempt.audit_id)
    assert row is not None and (row.status, row.error) == (FAILED, "ValueError: boom")


def test_a_skipped_attempt_says_why(database, tenant):
    log = AuditLog(database)
    with log.attempt(_attempt(tenant, "O-1", SUCCEEDED)) as attempt:
        attempt.skip("unchanged", "same content hash")

    row = log.get(attempt.audit_id)
    assert row is not None
    assert (row.status, row.operation, row.error) == (SKIPPED, "unchanged", "same content hash")


def test_latest_failed_lists_records_whose_newest_attempt_failed_oldest_first(database, tenant):
    log = AuditLog(database)
    fixed = log.write(_attempt(tenant, "O-fixed"))
    log.write(_attempt(tenant, "O-fixed", SUCCEEDED))
    waiting = log.write(_attempt(tenant, "O-wait"))
    log.write(_attempt(tenant, "*", operation="plan"))  # plan rows are not replayed per record
    log.write(_attempt(tenant, "O-no-task", replay_task=None))
    later = log.write(_attempt(tenant, "O-later"))
    other = log.write(_attempt(tenant + "-other", "O-wait"))

    assert [row.id for row in log.latest_failed(tenant)] == [waiting, later]
    assert fixed not in [row.id for row in log.latest_failed()]
    assert other in [row.id for row in log.latest_failed()]
    assert log.latest_failed(tenant, since=utcnow() + timedelta(minutes=1)) == []


def test_a_failed_row_is_marked_replayed_once(database, tenant):
    log = AuditLog(database)
    failed = log.write(_attempt(tenant, "O-1"))
    succeeded = log.write(_attempt(tenant, "O-2", SUCCEEDED))

    assert log.mark_replayed(failed) is True
    assert log.mark_replayed(failed) is False
    assert log.mark_replayed(succeeded) is False
    assert log.mark_replayed(10**9) is False
    row = log.get(failed)
    assert row is not None and row.status == REPLAYED
    assert log.latest_failed(tenant) == []


def test_list_is_newest_first_and_filters(database, tenant):
    log = AuditLog(database)
    first = log.write(_attempt(tenant, "O-1"))
    second = log.write(_attempt(tenant, "O-2", SUCCEEDED))

    assert [row.id for row in log.list(tenant=tenant)] == [second, first]
    assert [row.id for row in log.list(tenant=tenant, status=FAILED)] == [first]
    assert [row.id for row in log.list(tenant=tenant, limit=1)] == [second]
