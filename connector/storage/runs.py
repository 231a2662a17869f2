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
from connector.storage.models import AuditRecord, RunRecord
from connector.storage.run_records import PLAN_KEY


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
            and row.operation in ("create", "update")
            and wrote.get((row.entity, row.record_key)) != "create"
        ):
            wrote[(row.entity, row.record_key)] = row.operation
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
    """Correlation ids of the newest runs (by their plan entries), newest first."""
    query = (
        select(RunRecord.run_id)
        .where(RunRecord.record_key == PLAN_KEY)
        .order_by(RunRecord.audit_id.desc())
    )
    if tenant:
        query = query.where(RunRecord.tenant == tenant)
    found: list[str] = []
    offset = 0
    page = max(limit * 2, 10)  # a run has a plan entry per entity: about two per run
    with database.session() as session:
        while len(found) < limit:
            run_ids = list(session.scalars(query.offset(offset).limit(page)))
            found.extend(run_id for run_id in dict.fromkeys(run_ids) if run_id not in found)
            if len(run_ids) < page:
                break
            offset += page
    return found[:limit]


def run_progress(database: Database, run_id: str) -> RunProgress | None:
    """Where one run stands (see `runs_progress`); None for an unknown run."""
    found = runs_progress(database, [run_id])
    return found[0] if found else None


def runs_progress(database: Database, run_ids: Sequence[str]) -> list[RunProgress]:
    """Counts of each run by the current attempt of each of its records, in the order of
    `run_ids` (unknown runs left out): one aggregate over the runs' entries in run_records,
    which the audit writer keeps, so the cost follows the runs' records, not the log."""
    if not run_ids:
        return []
    is_plan = RunRecord.record_key == PLAN_KEY
    query = (
        select(
            RunRecord.run_id,
            is_plan,
            RunRecord.status,
            func.count(),
            func.sum(RunRecord.queued),
            func.min(RunRecord.tenant),
            func.min(RunRecord.started_at),
            func.max(RunRecord.finished_at),
        )
        .where(RunRecord.run_id.in_(list(run_ids)))
        .group_by(RunRecord.run_id, is_plan, RunRecord.status)
    )
    with database.session() as session:
        rows = session.execute(query).all()
    counted: dict[str, _Counts] = {}
    for run_id, plan, status, count, queued, tenant, started, finished in rows:
        counts = counted.setdefault(run_id, _Counts(tenant))
        counts.add(bool(plan), status, int(count), int(queued or 0), started, finished)
    return [counted[run_id].progress(run_id) for run_id in run_ids if counted.get(run_id)]


@dataclass
class _Counts:
    tenant: str
    plans: int = 0
    entities_planned: int = 0
    planned: int = 0
    plans_failed: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def add(
        self,
        plan: bool,
        status: str,
        count: int,
        queued: int,
        started: datetime | None,
        finished: datetime | None,
    ) -> None:
        if started is not None and (self.started_at is None or started < self.started_at):
            self.started_at = started
        if finished is not None and (self.finished_at is None or finished > self.finished_at):
            self.finished_at = finished
        if not plan:
            self.by_status[status] += count
            return
        self.plans += count
        # As run_summary counts: a superseded plan was retried with success (by the entry
        # that replaced it); a plan still retrying has queued nothing for good yet.
        if status in FINAL_STATUSES and status != SUPERSEDED:
            self.entities_planned += count
            self.planned += queued
            if status in (FAILED, DEFERRED):
                self.plans_failed += count

    def __bool__(self) -> bool:
        return self.plans > 0  # a run is known by its plan entries

    def progress(self, run_id: str) -> RunProgress:
        # Replayed, superseded and deferred records are final for this run (done), as
        # run_summary counts them.
        done_statuses = (SUCCEEDED, SKIPPED, REPLAYED, SUPERSEDED, DEFERRED)
        return RunProgress(
            run_id=run_id,
            tenant=self.tenant,
            started_at=self.started_at,
            finished_at=self.finished_at,
            entities_planned=self.entities_planned,
            planned=self.planned,
            done=sum(self.by_status[status] for status in done_statuses),
            retrying=self.by_status[RETRYING],
            failed=self.by_status[FAILED] + self.plans_failed,
        )


def last_completed_plans(
    database: Database, tenant: str | None = None
) -> dict[tuple[str, str], datetime]:
    """(tenant, entity) → when its newest plan that read IFS to the end finished.

    That is the connector's "last successful sync" of the entity: the plan saw every change
    and queued its work (records that then fail are counted as failures waiting, apart).
    """
    query = (
        select(RunRecord.tenant, RunRecord.entity, func.max(RunRecord.finished_at))
        .where(RunRecord.record_key == PLAN_KEY, RunRecord.status.in_((SUCCEEDED, SKIPPED)))
        .group_by(RunRecord.tenant, RunRecord.entity)
    )
    if tenant is not None:
        query = query.where(RunRecord.tenant == tenant)
    with database.session() as session:
        return {
            (row_tenant, entity): finished
            for row_tenant, entity, finished in session.execute(query)
            if finished is not None
        }
