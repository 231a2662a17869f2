"""A run's summary, counted from its audit rows: what was read, queued, written, failed."""

from __future__ import annotations

import uuid

from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, RETRYING, SUCCEEDED, Attempt, AuditLog
from connector.storage.runs import run_summary


def test_run_summary_counts_each_record_by_its_newest_attempt(database, tenant):
    run_id = uuid.uuid4().hex
    log = AuditLog(database)

    def row(entity: str, key: str, operation: str, status: str = SUCCEEDED, **summary) -> None:
        log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                entity,
                key,
                operation=operation,
                status=status,
                response_summary=summary or None,
                correlation_id=run_id,
            )
        )

    row("customer", "*", "plan", read=5, queued=4, unchanged=1, requests={"ifs": 2})
    row("customer", "C-1", "create", requests={"pipedrive": 3})
    row("customer", "C-2", "update")
    row("customer", "C-3", "unchanged")
    # An order synced its new customer first; the customer's own task then found it done.
    row("customer", "C-4", "create")
    row("customer", "C-4", "unchanged")
    row("order", "*", "plan", status=RETRYING, read=9, queued=9)  # will run again
    row("order", "*", "plan", status=FAILED)
    row("order", "O-1", "update", status=RETRYING)
    row("order", "O-1", "update", status=FAILED)
    row("note", "N-1", "create")  # no plan of this entity in the run
    log.write(Attempt(tenant, IFS_TO_PIPEDRIVE, "customer", "C-9", operation="create"))

    summary = run_summary(database, run_id)

    assert (summary.planned_entities, summary.read, summary.queued) == (2, 5, 4)
    assert (summary.created, summary.updated) == (2, 1)
    assert (summary.unchanged, summary.unchanged_by_task) == (2, 1)
    assert (summary.failed, summary.plans_failed) == (2, 1)
    assert sorted(failure["key"] for failure in summary.failures) == ["*", "O-1"]
    assert summary.requests == {"ifs": 2, "pipedrive": 3}
    assert summary.done == 5
    assert summary.finished(expected_entities=2) and not summary.finished(expected_entities=3)


def test_a_run_with_no_rows_is_empty_and_not_finished(database):
    summary = run_summary(database, uuid.uuid4().hex)

    assert summary.as_dict()["created"] == 0 and not summary.finished(expected_entities=1)


def test_a_run_stays_finished_when_its_failed_rows_are_replayed_or_fixed(database, tenant):
    run_id = uuid.uuid4().hex
    log = AuditLog(database)

    def row(key: str, status: str, **fields) -> int:
        return log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                status=status,
                correlation_id=run_id,
                **fields,
            )
        )

    row("*", SUCCEEDED, operation="plan", response_summary={"read": 3, "queued": 3})
    replayed = row("O-1", FAILED, error="boom")
    row("O-2", FAILED, error="boom")
    row("O-3", RETRYING, error="ifs HTTP 503: busy")
    assert run_summary(database, run_id).retrying == 1
    assert run_summary(database, run_id).last_retry_error == "ifs HTTP 503: busy"
    assert not run_summary(database, run_id).finished(1)

    row("O-3", FAILED, error="ifs HTTP 503: busy")  # retries exhausted: folded, then failed
    log.mark_replayed(replayed)
    # A replay outside the run fixes O-2 (its row is superseded, not failed).
    log.write(Attempt(tenant, IFS_TO_PIPEDRIVE, "order", "O-2", operation="update"))

    summary = run_summary(database, run_id)
    assert (summary.done, summary.queued, summary.retrying) == (3, 3, 0)
    assert summary.finished(1) and summary.fixed_since == 2 and summary.failed == 1


def test_run_progress_counts_replayed_superseded_and_deferred_records_as_done(database, tenant):
    # The console's Runs page: a run whose rows were replayed, fixed or deferred is over.
    from connector.storage.runs import run_progress

    log = AuditLog(database)
    run_id = uuid.uuid4().hex

    def row(key: str, status: str, operation: str = "update", **summary) -> int:
        return log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                operation=operation,
                status=status,
                error=None if status == SUCCEEDED else f"{key} went wrong",
                response_summary=summary or None,
                correlation_id=run_id,
                replay_task="ml_connector.sync_order",
                replay_args={"tenant": tenant, "key": key},
            )
        )

    row("*", RETRYING, "plan")  # retried: the next plan row takes its place
    row("*", SUCCEEDED, "plan", read=4, queued=4)
    row("O-1", SUCCEEDED)
    assert log.mark_replayed(row("O-2", FAILED))
    deferred = row("O-3", RETRYING)
    assert log.mark_deferred(deferred, "waits for the next scheduled plan")
    row("O-4", FAILED)

    progress = run_progress(database, run_id)

    assert progress is not None
    assert (progress.entities_planned, progress.planned) == (1, 4)
    assert (progress.done, progress.failed, progress.retrying) == (3, 1, 0)
    assert not progress.running


def test_a_failure_folded_into_a_later_run_counts_in_both_until_the_record_is_fixed(
    database, tenant
):
    from connector.storage.runs import recent_runs, runs_progress

    log = AuditLog(database)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex

    def row(run_id: str | None, key: str, status: str, **summary) -> int:
        return log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                operation="plan" if key == "*" else "update",
                status=status,
                error=None if status == SUCCEEDED else "pipedrive HTTP 400: bad currency",
                response_summary=summary or None,
                correlation_id=run_id,
                replay_task="ml_connector.sync_order",
            )
        )

    for run_id in (first, second):
        row(run_id, "*", SUCCEEDED, read=2, queued=2)
        row(run_id, f"O-{run_id[:4]}", SUCCEEDED)
        failed = row(run_id, "O-X", FAILED)  # the same failure: folded into one row

    assert log.get(failed).occurrences == 2
    assert recent_runs(database, tenant) == [second, first]
    before = runs_progress(database, [second, first])
    assert [(p.run_id, p.planned, p.done, p.failed) for p in before] == [
        (second, 2, 1, 1),
        (first, 2, 1, 1),  # still failed there (not "running" because its row moved on)
    ]

    row(None, "O-X", SUCCEEDED)  # fixed outside the runs: done in both
    after = runs_progress(database, [first, second, uuid.uuid4().hex])
    assert [(p.run_id, p.done, p.failed, p.running) for p in after] == [
        (first, 2, 0, False),
        (second, 2, 0, False),
    ]


def test_the_newest_successful_plan_of_each_entity_is_the_last_successful_sync(database, tenant):
    from connector.storage.runs import last_completed_plans

    log = AuditLog(database)
    for status in (SUCCEEDED, FAILED):
        log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "customer",
                "*",
                operation="plan",
                status=status,
                error=None if status == SUCCEEDED else "ifs HTTP 401",
                correlation_id=uuid.uuid4().hex,
            )
        )
    succeeded = log.list(tenant=tenant, status=SUCCEEDED)[0]

    assert last_completed_plans(database, tenant) == {(tenant, "customer"): succeeded.finished_at}


def test_workers_writing_one_run_at_once_leave_its_totals_exact(database, tenant):
    from connector.storage.runs import run_progress
    from tests.connector.storage.conftest import at_once

    log = AuditLog(database)
    run_id = uuid.uuid4().hex
    log.write(
        Attempt(
            tenant,
            IFS_TO_PIPEDRIVE,
            "order",
            "*",
            operation="plan",
            response_summary={"queued": 40},
            correlation_id=run_id,
        )
    )

    def worker(index: int) -> None:
        for number in range(5):
            key = f"O-{index}-{number}"
            status = FAILED if number == 0 else SUCCEEDED
            log.write(
                Attempt(
                    tenant, IFS_TO_PIPEDRIVE, "order", key, status=status, correlation_id=run_id
                )
            )

    at_once(8, worker)

    progress = run_progress(database, run_id)
    assert progress is not None
    assert (progress.planned, progress.done, progress.failed, progress.running) == (
        40,
        32,
        8,
        False,
    )


def test_a_record_fixed_while_its_failure_is_marked_leaves_the_totals_exact(database, tenant):
    # The record's new attempt and an operator's (or a task's) mark of its earlier row change
    # one run entry at once; whichever goes first, the totals move by what the entry stood for.
    from connector.storage.runs import run_progress
    from tests.connector.storage.conftest import at_once

    log = AuditLog(database)
    run_id = uuid.uuid4().hex
    keys = [f"O-{number}" for number in range(6)]
    new_keys = [f"N-{number}" for number in range(3)]  # first written by two attempts at once
    log.write(
        Attempt(
            tenant,
            IFS_TO_PIPEDRIVE,
            "order",
            "*",
            operation="plan",
            response_summary={"queued": len(keys) + len(new_keys)},
            correlation_id=run_id,
        )
    )
    earlier = {
        key: log.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                status=RETRYING if number % 2 else FAILED,
                error="HTTP 503",
                correlation_id=run_id,
            )
        )
        for number, key in enumerate(keys)
    }

    def work(index: int) -> None:
        if index >= 2 * len(keys):
            key = new_keys[(index - 2 * len(keys)) // 2]
            log.write(
                Attempt(
                    tenant, IFS_TO_PIPEDRIVE, "order", key, status=SUCCEEDED, correlation_id=run_id
                )
            )
            return
        key = keys[index // 2]
        if index % 2:
            mark = log.mark_failed if (index // 2) % 2 else log.mark_replayed
            mark(earlier[key])
        else:
            log.write(
                Attempt(
                    tenant, IFS_TO_PIPEDRIVE, "order", key, status=SUCCEEDED, correlation_id=run_id
                )
            )

    at_once(2 * (len(keys) + len(new_keys)), work)

    progress = run_progress(database, run_id)
    assert progress is not None
    assert (progress.planned, progress.done, progress.failed, progress.running) == (
        len(keys) + len(new_keys),
        len(keys) + len(new_keys),
        0,
        False,
    )
