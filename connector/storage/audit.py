"""The one audit writer: a row per attempt to move a record, and the queries replay needs."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, true, update
from sqlalchemy.orm import Session, aliased

from connector.storage import run_records
from connector.storage.database import Database, run
from connector.storage.models import AuditRecord, table_of, utcnow

IFS_TO_PIPEDRIVE = "ifs_to_pipedrive"
PIPEDRIVE_TO_IFS = "pipedrive_to_ifs"

# AuditRecord.status values.
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRYING = "retrying"  # a transient failure; the job retries (or marks it failed at the end)
SKIPPED = "skipped"
REPLAYED = "replayed"  # a failed row whose replay has been queued
# Failed, retrying or deferred, then a later attempt of the record succeeded (or, for a
# retrying row, a later attempt of the record took its place).
SUPERSEDED = "superseded"
DEFERRED = "deferred"  # the wait was too long to hold a message; the next scheduled plan retries
STATUSES = (SUCCEEDED, FAILED, SKIPPED, RETRYING, REPLAYED, SUPERSEDED, DEFERRED)
# The attempt will not run again by itself.
FINAL_STATUSES = (SUCCEEDED, FAILED, SKIPPED, SUPERSEDED, DEFERRED)
# Statuses of a new attempt that may fold into the record's newest row.
_FIXED_BY_SUCCESS = (FAILED, RETRYING)
# Statuses a later success of the same record turns into SUPERSEDED.
_SUPERSEDED_BY_SUCCESS = (FAILED, RETRYING, DEFERRED)


@dataclass
class Attempt:
    """What one attempt did; filled in by the code inside `AuditLog.attempt`."""

    tenant: str
    direction: str
    entity: str
    record_key: str
    operation: str = "sync"
    status: str = SUCCEEDED
    error: str | None = None
    request_summary: dict[str, Any] | None = None
    response_summary: dict[str, Any] | None = None
    replay_task: str | None = None
    replay_args: dict[str, Any] | None = None
    replay_of: int | None = None
    correlation_id: str | None = None
    attempt: int = 1
    started_at: datetime = field(default_factory=utcnow)
    audit_id: int | None = None

    def skip(self, operation: str, reason: str) -> None:
        self.operation, self.status, self.error = operation, SKIPPED, reason


class AuditLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    @contextmanager
    def attempt(self, attempt: Attempt) -> Iterator[Attempt]:
        """Time the block and write its row; an exception marks the row failed and propagates."""
        started = time.perf_counter()
        try:
            yield attempt
        except Exception as error:
            attempt.status = FAILED
            attempt.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            self.write(attempt, duration_ms=int((time.perf_counter() - started) * 1000))

    def write(
        self,
        attempt: Attempt,
        *,
        duration_ms: int | None = None,
        session: Session | None = None,
    ) -> int:
        """Write the attempt's row and return its id.

        A failure identical to the record's newest row (same operation and error, that row
        still failed or retrying) is folded into that row: its `occurrences` grows and its
        finished_at moves on, so a record failing on every schedule keeps one row. A success
        marks the record's earlier failed and retrying rows superseded. `session`: join the
        caller's transaction (a record's id-map change commits with its audit row).
        """
        if session is not None:
            return self._write(session, attempt, duration_ms)
        with self.database.session() as own:
            return self._write(own, attempt, duration_ms)

    def _write(self, session: Session, attempt: Attempt, duration_ms: int | None) -> int:
        if attempt.status in _FIXED_BY_SUCCESS and attempt.replay_of is None:
            folded = self._fold(session, attempt, duration_ms)
            if folded is not None:
                attempt.audit_id = folded
                return folded
        row = AuditRecord(
            tenant=attempt.tenant,
            direction=attempt.direction,
            entity=attempt.entity,
            record_key=attempt.record_key,
            operation=attempt.operation,
            status=attempt.status,
            attempt=attempt.attempt,
            error=attempt.error,
            request_summary=attempt.request_summary,
            response_summary=attempt.response_summary,
            replay_task=attempt.replay_task,
            replay_args=attempt.replay_args,
            replay_of=attempt.replay_of,
            correlation_id=attempt.correlation_id,
            started_at=attempt.started_at,
            finished_at=utcnow(),
            duration_ms=duration_ms,
        )
        # A success closes the record's earlier failures; any new attempt takes the place
        # of an earlier retrying row (its retry is this attempt, or was given up), so no
        # row stays "retrying" once the record has moved on.
        closed = _SUPERSEDED_BY_SUCCESS if _fixes_record(attempt) else (RETRYING,)
        row.id, superseded = _insert_superseding(session, row, attempt, closed)
        # The run tables change in this same transaction: a run's totals never count a row
        # that was rolled back, nor miss one that was committed.
        run_records.restate(session, superseded, SUPERSEDED)
        run_records.enter(session, row)
        attempt.audit_id = row.id
        return row.id

    @staticmethod
    def _fold(session: Session, attempt: Attempt, duration_ms: int | None) -> int | None:
        newest = session.scalar(
            select(AuditRecord)
            .where(*_same_record(attempt))
            .order_by(AuditRecord.id.desc())
            .limit(1)
            .with_for_update()
        )
        if (
            newest is None
            or newest.status not in _FIXED_BY_SUCCESS
            or newest.operation != attempt.operation
            or newest.error != attempt.error
        ):
            return None
        newest.status = attempt.status
        newest.attempt = attempt.attempt
        newest.occurrences = (newest.occurrences or 1) + 1
        newest.finished_at = utcnow()
        newest.duration_ms = duration_ms
        newest.response_summary = attempt.response_summary
        newest.request_summary = attempt.request_summary or newest.request_summary
        # The row now stands for the newest run's attempt, which reads its outcome from it.
        newest.correlation_id = attempt.correlation_id or newest.correlation_id
        newest.replay_task = attempt.replay_task or newest.replay_task
        newest.replay_args = attempt.replay_args or newest.replay_args
        session.flush()
        # It stays the record's failure in the runs where it failed before, and is this one's.
        run_records.restate(session, [newest.id], newest.status)
        run_records.enter(session, newest, started_at=attempt.started_at)
        return newest.id

    def get(self, audit_id: int) -> AuditRecord | None:
        with self.database.session() as session:
            return session.get(AuditRecord, audit_id)

    def latest_failed(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Failed rows that are still the newest attempt for their record (not fixed since),
        oldest first; plan rows (key "*") and rows without a replay task are left out."""
        query = select(AuditRecord).where(*_waiting_failures(tenant, since))
        with self.database.session() as session:
            return list(session.scalars(query.order_by(AuditRecord.id)))

    def failed_waiting(self, tenant: str | None = None) -> dict[str, int]:
        """Tenant → how many rows `latest_failed` would list, counted in the database."""
        query = (
            select(AuditRecord.tenant, func.count())
            .where(*_waiting_failures(tenant, None))
            .group_by(AuditRecord.tenant)
        )
        with self.database.session() as session:
            return {row_tenant: int(count) for row_tenant, count in session.execute(query)}

    def pipedrive_requests(
        self, tenants: Sequence[str], after_id: int
    ) -> tuple[dict[str, tuple[int, int]], int]:
        """What the record attempts (IFS → Pipedrive, plan rows left out) written after row
        `after_id` took from Pipedrive: tenant → (requests, attempts), and the newest row id
        seen (the next call's `after_id`). A range of the primary key, summed in the database."""
        requests = AuditRecord.response_summary[("requests", "pipedrive")].as_integer()
        query = (
            select(AuditRecord.tenant, func.count(), func.sum(requests), func.max(AuditRecord.id))
            .where(
                AuditRecord.id > after_id,
                AuditRecord.tenant.in_(list(tenants)),
                AuditRecord.direction == IFS_TO_PIPEDRIVE,
                AuditRecord.record_key != "*",
            )
            .group_by(AuditRecord.tenant)
        )
        found: dict[str, tuple[int, int]] = {}
        newest = after_id
        with self.database.session() as session:
            for row_tenant, attempts, spent, last_id in session.execute(query):
                found[str(row_tenant)] = (int(spent or 0), int(attempts))
                newest = max(newest, int(last_id))
        return found, newest

    def newest_id(self) -> int:
        """The id of the newest row (0 for an empty log)."""
        with self.database.session() as session:
            return int(session.scalar(select(func.max(AuditRecord.id))) or 0)

    def story(self, tenant: str, entity: str, record_keys: Sequence[str]) -> list[AuditRecord]:
        """Every attempt on one record (under any of its keys, e.g. the order number and the
        `deal:<id>` of a stage push that failed before it knew the order), oldest first."""
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(AuditRecord)
                    .where(
                        AuditRecord.tenant == tenant,
                        AuditRecord.entity == entity,
                        AuditRecord.record_key.in_(list(record_keys)),
                    )
                    .order_by(AuditRecord.id)
                )
            )

    def replays_of(self, audit_ids: Sequence[int]) -> list[AuditRecord]:
        """The attempts that replayed the given rows, oldest first."""
        if not audit_ids:
            return []
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.replay_of.in_(list(audit_ids)))
                    .order_by(AuditRecord.id)
                )
            )

    def list(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if tenant:
            query = query.where(AuditRecord.tenant == tenant)
        if status:
            query = query.where(AuditRecord.status == status)
        if since:
            query = query.where(AuditRecord.started_at >= since)
        with self.database.session() as session:
            return list(session.scalars(query))

    def mark_failed(self, audit_id: int) -> bool:
        """Turn a retrying row into a failed one (its retries are exhausted), so replay finds
        it; False if it was not (or no longer) retrying."""
        with self.database.session() as session:
            row = session.get(AuditRecord, audit_id, with_for_update=True)
            if row is None or row.status != RETRYING:
                return False
            row.status = FAILED
            run_records.restate(session, [row.id], FAILED)
            return True

    def mark_deferred(self, audit_id: int, reason: str) -> bool:
        """Turn a retrying row into a deferred one: its wait is longer than a queued message
        may sleep, so the next scheduled plan picks the record up again; `reason` says so."""
        with self.database.session() as session:
            row = session.get(AuditRecord, audit_id, with_for_update=True)
            if row is None or row.status != RETRYING:
                return False
            row.status, row.error = DEFERRED, f"{reason} (was: {row.error})"
            run_records.restate(session, [row.id], DEFERRED)
            return True

    def mark_replayed(self, audit_id: int, requested_by: str | None = None) -> bool:
        """Flag a failed row as replayed, with who asked for it and when; False if it was not
        (or no longer) failed."""
        with self.database.session() as session:
            row = session.get(AuditRecord, audit_id, with_for_update=True)
            if row is None or row.status != FAILED:
                return False
            row.status = REPLAYED
            row.replayed_by = requested_by[:128] if requested_by else None
            row.replayed_at = utcnow()
            run_records.restate(session, [row.id], REPLAYED)
            return True


def _waiting_failures(tenant: str | None, since: datetime | None) -> list[Any]:
    """Conditions of a failed row still waiting: no newer attempt of its record since."""
    # NOT EXISTS a newer row of the same record: the failed rows come from ix_audit_failed
    # and each check from ix_audit_record (both answer from the index alone once vacuumed),
    # so the cost follows the failures, not the log.
    newer = aliased(AuditRecord)
    fixed_since = (
        select(newer.id)
        .where(
            newer.tenant == AuditRecord.tenant,
            newer.entity == AuditRecord.entity,
            newer.record_key == AuditRecord.record_key,
            # A stage push and a sync of one order are different stories.
            newer.direction == AuditRecord.direction,
            newer.id > AuditRecord.id,
        )
        .exists()
    )
    conditions = [
        AuditRecord.status == FAILED,
        AuditRecord.replay_task.is_not(None),
        AuditRecord.record_key != "*",
        ~fixed_since,
    ]
    if tenant:
        conditions.append(AuditRecord.tenant == tenant)
    if since:
        conditions.append(AuditRecord.started_at >= since)
    return conditions


# The columns that say which record a row is about (`_same_record`).
_RECORD_COLUMNS = ("tenant", "entity", "record_key", "direction")


def _same_record(attempt: Attempt) -> tuple[Any, ...]:
    return (
        AuditRecord.tenant == attempt.tenant,
        AuditRecord.entity == attempt.entity,
        AuditRecord.record_key == attempt.record_key,
        AuditRecord.direction == attempt.direction,
    )


def _fixes_record(attempt: Attempt) -> bool:
    """A success of the record; an IFS → Pipedrive skip means "already in step" too (a skipped
    stage push, an echo for instance, says nothing about an earlier failed push)."""
    return attempt.status == SUCCEEDED or (
        attempt.status == SKIPPED and attempt.direction == IFS_TO_PIPEDRIVE
    )


def _insert_superseding(
    session: Session, row: AuditRecord, attempt: Attempt, closed: Sequence[str]
) -> tuple[int, list[int]]:
    """Insert `row` (a transient AuditRecord: only its values are used) and mark the record's
    earlier rows in `closed` superseded; (the new row's id, the superseded ids).

    On Postgres one statement: the INSERT and the UPDATE are data-modifying CTEs of one
    SELECT, so both see one snapshot (every earlier row, not the new one). SQLite, which has
    no such CTEs, runs the two in turn.
    """
    values: dict[str, Any] = {}
    for column in AuditRecord.__table__.columns:
        value = getattr(row, column.key)
        # An INSERT in a CTE gets no Python-side defaults (the statement run is a SELECT).
        if value is None and column.default is not None and column.default.is_scalar:
            value = column.default.arg
        if value is not None:
            values[column.key] = value
    if session.get_bind().dialect.name != "postgresql":
        new_id = int(
            session.execute(
                insert(AuditRecord).values(values).returning(AuditRecord.id)
            ).scalar_one()
        )
        return new_id, list(session.scalars(_supersede(attempt, closed, new_id)).all())
    statement = _superseding_statement(tuple(values), tuple(closed))
    rows = run(session, statement, {f"new_{name}": value for name, value in values.items()})
    return int(rows[0][0]), [int(old) for _, old in rows if old is not None]


@functools.lru_cache(maxsize=64)
def _superseding_statement(columns: tuple[str, ...], closed: tuple[str, ...]) -> Any:
    """`_insert_superseding`'s Postgres statement for rows with values in `columns`, built
    once with bound parameters (`new_<column>`): building it per row, with its cache key,
    was a third of the audit row's CPU. The UPDATE finds the record by the new row's own
    values."""
    table = table_of(AuditRecord)
    bound = {name: bindparam(f"new_{name}", type_=table.c[name].type) for name in columns}
    new = insert(table).values(bound).returning(table.c.id).cte("new_row")
    superseded = (
        update(table)
        .where(
            *(table.c[name] == bound[name] for name in _RECORD_COLUMNS),
            table.c.id < select(new.c.id).scalar_subquery(),
            # Not IN: an IN list is expanded per execution, which the compiled SQL cannot be.
            or_(*(table.c.status == status for status in closed)),
        )
        .values(status=SUPERSEDED)
        .returning(table.c.id)
        .cte("superseded")
    )
    return select(new.c.id, superseded.c.id).select_from(new.outerjoin(superseded, true()))


def _supersede(attempt: Attempt, closed: Sequence[str], newer_than: Any) -> Any:
    return (
        update(AuditRecord)
        .where(*_same_record(attempt), AuditRecord.id < newer_than, AuditRecord.status.in_(closed))
        .values(status=SUPERSEDED)
        .returning(AuditRecord.id)
    )
