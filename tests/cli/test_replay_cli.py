"""`replay` says what each replay did and why, exits non-zero when one failed, re-plans a
plan row, and leaves the run it came from finished; the audit shows a record's failure once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector import jobs
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, Attempt, AuditLog
from simulators.ifs.schema import customer_info, customer_order
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.integration


def _sync(stack: Stack) -> dict[str, Any]:
    result = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "300")
    assert result.returncode in (0, 2), result.stderr + stack.worker_logs()
    return json.loads(result.stdout.strip().splitlines()[-1])


def _failed_rows(stack: Stack) -> list[dict[str, Any]]:
    listed = stack.cli("audit", "list", "--tenant", stack.tenant, "--status", "failed", "--json")
    return [json.loads(line) for line in listed.stdout.splitlines()]


def _status(stack: Stack) -> dict[str, Any]:
    result = stack.cli("status", "--tenant", stack.tenant, "--json")
    return json.loads(result.stdout)["tenants"][0]


def test_a_failing_replay_exits_non_zero_and_a_fix_supersedes_the_failed_row(
    stack_factory,
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=3, seed=1)
    bad = stack.ifs.keys(customer_order())[0]
    stack.ifs.edit_order(bad, CurrencyCode="EURO")  # Pipedrive answers 400 for this
    stack.start_workers(count=1, concurrency=2)
    assert _sync(stack)["failed"] == 1
    (row,) = _failed_rows(stack)

    replayed = stack.cli("replay", str(row["id"]), "--wait")

    assert replayed.returncode == 2, replayed.stdout + replayed.stderr
    assert f"{row['id']}: failed (" in replayed.stdout and "Currency" in replayed.stdout
    # The replayed run is finished, not "running: N queued".
    assert _status(stack)["last_run"]["state"] == "finished"

    # The same failure on the next two schedules folds into one row.
    _sync(stack)
    _sync(stack)
    (folded,) = _failed_rows(stack)
    assert folded["occurrences"] == 3 and folded["record_key"] == bad, folded
    assert _status(stack)["last_run"]["state"] == "finished"

    stack.ifs.edit_order(bad, CurrencyCode="EUR")
    assert _sync(stack)["failed"] == 0
    assert _failed_rows(stack) == []  # superseded by the success
    assert _status(stack)["failed_waiting"] == 0


def test_replay_says_why_a_record_was_skipped_or_not_queued(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=1, orders=0, seed=2)
    stack.start_workers(count=1, concurrency=1)
    assert _sync(stack)["created"] == 1
    key = stack.ifs.keys(customer_info())[0]
    # A failure recorded for a record that is in step by now (e.g. a transient outage).
    row_id = AuditLog(stack.runtime.database).write(
        Attempt(
            stack.tenant,
            IFS_TO_PIPEDRIVE,
            "customer",
            key,
            status=FAILED,
            error="Pipedrive HTTP 500: oops",
            replay_task=jobs.SYNC_CUSTOMER,
            replay_args={"tenant": stack.tenant, "key": key},
        )
    )

    replayed = stack.cli("replay", str(row_id), "--wait")

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"{row_id}: skipped (mapped content unchanged" in replayed.stdout, replayed.stdout
    again = stack.cli("replay", str(row_id))
    assert again.returncode == 1 and "replayed, not failed" in again.stderr, again.stderr


def test_replaying_a_failed_plan_row_plans_again(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=2, seed=3)
    token = stack.runtime.vault.get(stack.tenant, "pipedrive", "api_token")
    stack.runtime.vault.delete(stack.tenant, "pipedrive", "api_token")
    stack.start_workers(count=1, concurrency=2)
    summary = _sync(stack)
    assert summary["queued"] == 0 and summary["failures"], summary
    plan_rows = [failure["audit_id"] for failure in summary["failures"] if failure["key"] == "*"]
    stack.runtime.vault.set(stack.tenant, "pipedrive", "api_token", token)

    replayed = stack.cli("replay", *map(str, plan_rows), "--wait", "--timeout", "300")

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr + stack.worker_logs()
    assert replayed.stdout.count("succeeded (re-planned as run") == len(plan_rows)
    assert len(stack.pipedrive.all_records("deal")) == 2
