"""The audit log: one row per attempt, the failed rows still waiting, marking replays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.storage.audit import (
    DEFERRED,
    FAILED,
    IFS_TO_PIPEDRIVE,
    PIPEDRIVE_TO_IFS,
    REPLAYED,
    RETRYING,
    SKIPPED,
    SUCCEEDED,
    SUPERSEDED,
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
    # The Tenants page counts them in the database, per tenant.
    assert log.failed_waiting(tenant) == {tenant: 2}
    counted = log.failed_waiting()
    assert (counted[tenant], counted[tenant + "-other"]) == (2, 1)


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


def test_a_later_success_supersedes_the_records_failed_and_retrying_rows(database, tenant):
    log = AuditLog(database)
    failed = log.write(_attempt(tenant, "O-1", error="Pipedrive HTTP 400: Currency"))
    retrying = log.write(_attempt(tenant, "O-1", RETRYING, error="ifs HTTP 503: busy"))
    other = log.write(_attempt(tenant, "O-2", error="Pipedrive HTTP 400: Currency"))
    log.write(_attempt(tenant, "O-1", SUCCEEDED, operation="update"))

    assert [log.get(failed).status, log.get(retrying).status] == [SUPERSEDED, SUPERSEDED]
    assert [row.id for row in log.list(tenant=tenant, status=FAILED)] == [other]
    assert [row.id for row in log.latest_failed(tenant)] == [other]


def test_an_unchanged_skip_supersedes_but_a_skipped_stage_push_does_not(database, tenant):
    log = AuditLog(database)
    failed = log.write(_attempt(tenant, "O-1", error="boom"))
    log.write(_attempt(tenant, "O-1", SKIPPED, operation="unchanged"))
    push = Attempt(tenant, PIPEDRIVE_TO_IFS, "order", "O-1", status=FAILED, error="412")
    pushed = log.write(push)
    log.write(Attempt(tenant, PIPEDRIVE_TO_IFS, "order", "O-1", status=SKIPPED, error="echo"))

    assert (log.get(failed).status, log.get(pushed).status) == (SUPERSEDED, FAILED)


def test_identical_failures_of_a_record_fold_into_one_row_with_a_count(database, tenant):
    log = AuditLog(database)
    first = log.write(
        _attempt(tenant, "O-1", error="Pipedrive HTTP 400: Currency", correlation_id="r1")
    )
    started = log.get(first).started_at
    again = [
        log.write(_attempt(tenant, "O-1", error="Pipedrive HTTP 400: Currency", correlation_id=run))
        for run in ("r2", "r3")
    ]
    different = log.write(_attempt(tenant, "O-1", error="Pipedrive HTTP 400: Title"))

    assert again == [first, first] and different != first
    row = log.get(first)
    assert row is not None and row.occurrences == 3 and row.status == FAILED
    assert row.started_at == started and row.finished_at > started
    assert row.correlation_id == "r3"  # the newest run reads its outcome from the row
    assert [r.id for r in log.list(tenant=tenant, status=FAILED)] == [different, first]


def test_retrying_rows_fold_and_the_last_retry_marks_the_one_row_failed(database, tenant):
    log = AuditLog(database)
    rows = {
        log.write(_attempt(tenant, "O-1", RETRYING, error="ifs HTTP 503: busy", attempt=n))
        for n in (1, 2, 3)
    }

    assert len(rows) == 1
    (row_id,) = rows
    assert log.get(row_id).attempt == 3 and log.get(row_id).occurrences == 3
    assert log.mark_failed(row_id) is True
    assert [row.id for row in log.latest_failed(tenant)] == [row_id]


def test_a_replays_failure_keeps_its_own_row(database, tenant):
    log = AuditLog(database)
    failed = log.write(_attempt(tenant, "O-1", error="boom"))
    log.mark_replayed(failed)
    replayed = log.write(_attempt(tenant, "O-1", error="boom", replay_of=failed))

    assert replayed != failed and log.get(replayed).replay_of == failed


def test_a_deferred_row_says_why_and_is_not_waiting_for_a_replay(database, tenant):
    log = AuditLog(database)
    row_id = log.write(_attempt(tenant, "O-1", RETRYING, error="daily budget exhausted"))

    assert log.mark_deferred(row_id, "waits 86400s; the next scheduled plan retries") is True
    row = log.get(row_id)
    assert row is not None and row.status == DEFERRED
    assert row.error.startswith("waits 86400s; the next scheduled plan retries")
    assert log.latest_failed(tenant) == [] and log.mark_deferred(row_id, "again") is False


def test_a_new_attempt_closes_the_records_earlier_retrying_row(database, tenant):
    # A retry that fails differently writes a new row: the earlier retrying row must not be
    # left "retrying" for ever (only the newest one is marked failed when retries run out).
    log = AuditLog(database)
    first = log.write(_attempt(tenant, "O-1", RETRYING, error="ifs HTTP 503"))
    second = log.write(_attempt(tenant, "O-1", RETRYING, error="lock timeout"))

    assert second != first
    assert log.get(first).status == SUPERSEDED  # type: ignore[union-attr]
    assert log.get(second).status == RETRYING  # type: ignore[union-attr]


def test_a_success_supersedes_a_deferred_row(database, tenant):
    log = AuditLog(database)
    deferred = log.write(_attempt(tenant, "O-1", RETRYING, error="daily budget"))
    assert log.mark_deferred(deferred, "waits for the next scheduled plan")
    log.write(_attempt(tenant, "O-1", SUCCEEDED))
    assert log.get(deferred).status == SUPERSEDED  # type: ignore[union-attr]


def test_a_newer_row_of_the_other_direction_does_not_hide_a_failure(database, tenant):
    log = AuditLog(database)
    push = log.write(
        Attempt(
            tenant,
            PIPEDRIVE_TO_IFS,
            "order",
            "O-1",
            operation="push_stage",
            status=FAILED,
            error="ifs HTTP 400",
            replay_task="ml_connector.push_stage_to_ifs",
            replay_args={"tenant": tenant, "webhook_event_id": 1},
        )
    )
    log.write(_attempt(tenant, "O-1", SUCCEEDED))
    assert push in [row.id for row in log.latest_failed(tenant)]
