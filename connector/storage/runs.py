"""Progress and summary of sync runs: a run's summary read back from its audit rows (by
correlation id), the progress of many runs from their entries in run_records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from connector.storage.audit import (
    DEFERRED,
    FAILED,
    FINAL_STATUSES,
    REPLAYED,
    RETRYING,
    SKIPPED,
    SUCCEEDED,
    SUPERSEDED,
)
from connector.storage.database import Database
from connector.storage.models import AuditRecord, RunTotals


@dataclass
class RunSummary:
    run_id: str
    planned_entities: int = 0  # plan rows written so far
    read: int = 0
    queued: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    unchanged_by_task: int = 0  # queued, but the task found nothing to write
    plans_failed: int = 0  # entities whose plan failed (counted in `failed` too)
    # Failed in this run, then replayed or fixed by a later attempt outside the run.
    fixed_since: int = 0
    deferred: int = 0  # waits too long for a queued message: the next scheduled plan retries
    retrying: int = 0  # records (and plans) whose newest attempt failed transiently
    last_retry_error: str | None = None  # the newest of those errors ("ifs HTTP 503: …")
    plan_errors: list[str] = field(default_factory=list)  # "customer: <error>" per failed plan

    @property
    def done(self) -> int:
        """Queued records whose newest attempt is final."""
        return (
            self.created
            + self.updated
            + self.unchanged_by_task
            + self.failed
            - self.plans_failed
            + self.fixed_since
            + self.deferred
        )

    def finished(self, expected_entities: int) -> bool:
        return self.planned_entities >= expected_entities and self.done >= self.queued

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "read": self.read,
            "queued": self.queued,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "fixed_since": self.fixed_since,
            "deferred": self.deferred,
            "retrying": self.retrying,
            "requests": dict(self.requests),
            "failures": self.failures,
            "plan_errors": self.plan_errors,
        }


def run_summary(database: Database, run_id: str) -> RunSummary:
    summary = RunSummary(run_id)
    with database.session() as session:
        rows = list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.correlation_id == run_id)
                .order_by(AuditRecord.id)
            )
        )
    newest: dict[tuple[str, str], AuditRecord] = {}
    # A record can be written by more than one task in a run (an order syncs its new
    # customer first; the customer's own task then finds it done): report what was done.
    wrote: dict[tuple[str, str], str] = {}
    planned = {row.entity for row in rows if row.record_key == "*" and row.operation == "plan"}
    for row in rows:
        requests = (row.response_summary or {}).get("requests") or {}
        summary.requests.update({k: int(v) for k, v in requests.items()})
        if row.record_key == "*" and row.operation == "plan":
            if row.status == RETRYING:
                summary.retrying += 1
                summary.last_retry_error = row.error
            if row.status not in FINAL_STATUSES or row.status == SUPERSEDED:
                continue  # a plan that will be retried, or was retried with success
            summary.planned_entities += 1
            plan = row.response_summary or {}
            summary.read += int(plan.get("read", 0))
            summary.queued += int(plan.get("queued", 0))
            summary.unchanged += int(plan.get("unchanged", 0))
            if row.status in (FAILED, DEFERRED):
                summary.failed += 1
                summary.plans_failed += 1
                summary.plan_errors.append(f"{row.entity}: {row.error}")
                summary.failures.append(
                    {"audit_id": row.id, "entity": row.entity, "key": "*", "error": row.error}
                )
            continue
        newest[(row.entity, row.record_key)] = row
        if (
            row.status == SUCCEEDED
            and row.operation in ("create", "update", "close")
            and wrote.get((row.entity, row.record_key)) != "create"
        ):
            # A deal closed because IFS no longer has its order (on_ifs_missing) was updated.
            written = "create" if row.operation == "create" else "update"
            wrote[(row.entity, row.record_key)] = written
    for (entity, key), row in sorted(newest.items(), key=lambda item: item[1].id):
        if entity not in planned:
            continue
        if row.status == RETRYING:
            summary.retrying += 1
            summary.last_retry_error = row.error
            continue
        if row.status in (REPLAYED, SUPERSEDED):
            # Final for this run (it failed here); the replay or later attempt is not its own.
            summary.fixed_since += 1
        elif row.status == DEFERRED:
            summary.deferred += 1
        elif row.status not in FINAL_STATUSES:
            continue
        elif row.status == FAILED:
            summary.failed += 1
            summary.failures.append(
                {"audit_id": row.id, "entity": entity, "key": key, "error": row.error}
            )
        elif wrote.get((entity, key)) == "create":
            summary.created += 1
        elif wrote.get((entity, key)) == "update":
            summary.updated += 1
        else:
            summary.unchanged_by_task += 1
            summary.unchanged += 1
    return summary


def latest_run(
    database: Database, tenant: str
) -> tuple[str, datetime | None, datetime | None] | None:
    """(run id, first start, last finish) of the tenant's newest run, by its plan rows."""
    with database.session() as session:
        run_id = session.scalar(
            select(AuditRecord.correlation_id)
            .where(
                AuditRecord.tenant == tenant,
                AuditRecord.record_key == "*",
                AuditRecord.operation == "plan",
                AuditRecord.correlation_id.is_not(None),
            )
            .order_by(AuditRecord.id.desc())
            .limit(1)
        )
        if run_id is None:
            return None
        started, finished = session.execute(
            select(func.min(AuditRecord.started_at), func.max(AuditRecord.finished_at)).where(
                AuditRecord.correlation_id == run_id
            )
        ).one()
    return run_id, started, finished


@dataclass(frozen=True)
class RunProgress:
    """Where one run stands, counted in the database: records planned and their newest state."""

    run_id: str
    tenant: str
    started_at: datetime | None
    finished_at: datetime | None
    entities_planned: int
    planned: int  # records the plans queued
    done: int  # records whose newest attempt succeeded or was skipped
    retrying: int
    failed: int  # records (and plans) whose newest attempt failed

    @property
    def running(self) -> bool:
        return self.done + self.failed < self.planned


def recent_runs(database: Database, tenant: str | None = None, limit: int = 20) -> list[str]:
    """Correlation ids of the newest runs (by when their newest plan entry was written),
    newest first."""
    query = (
        select(RunTotals.run_id)
        .where(RunTotals.planned_at.is_not(None))
        .order_by(RunTotals.planned_at.desc())
        .limit(limit)
    )
    if tenant:
        query = query.where(RunTotals.tenant == tenant)
    with database.session() as session:
        return list(session.scalars(query))


def run_progress(database: Database, run_id: str) -> RunProgress | None:
    """Where one run stands (see `runs_progress`); None for an unknown run."""
    found = runs_progress(database, [run_id])
    return found[0] if found else None


def runs_progress(database: Database, run_ids: Sequence[str]) -> list[RunProgress]:
    """Where each run stands, by the current attempt of each of its records, in the order of
    `run_ids` (runs without a plan left out): a stored row per run that the audit writer
    moves with each change (connector.storage.run_records), so no run's rows are counted."""
    if not run_ids:
        return []
    with database.session() as session:
        found = {
            totals.run_id: totals
            for totals in session.scalars(
                select(RunTotals).where(RunTotals.run_id.in_(list(run_ids)), RunTotals.plans > 0)
            )
        }
    return [_progress(found[run_id]) for run_id in run_ids if run_id in found]


def _progress(totals: RunTotals) -> RunProgress:
    return RunProgress(
        run_id=totals.run_id,
        tenant=totals.tenant,
        started_at=totals.started_at,
        finished_at=totals.finished_at,
        entities_planned=totals.entities_planned,
        planned=totals.planned,
        done=totals.done,
        retrying=totals.retrying,
        failed=totals.records_failed + totals.plans_failed,
    )


def last_completed_plans(
    database: Database, tenant: str | None = None
) -> dict[tuple[str, str], datetime]:
    """(tenant, entity) → when its newest plan that read IFS to the end finished.

    That is the connector's "last successful sync" of the entity: the plan saw every change
    and queued its work (records that then fail are counted as failures waiting, apart).
    """
    query = (
        select(AuditRecord.tenant, AuditRecord.entity, func.max(AuditRecord.finished_at))
        .where(
            AuditRecord.record_key == "*",
            AuditRecord.operation == "plan",
            AuditRecord.status.in_((SUCCEEDED, SKIPPED)),
        )
        .group_by(AuditRecord.tenant, AuditRecord.entity)
    )
    if tenant is not None:
        query = query.where(AuditRecord.tenant == tenant)
    with database.session() as session:
        return {
            (row_tenant, entity): finished
            for row_tenant, entity, finished in session.execute(query)
            if finished is not None
        }
