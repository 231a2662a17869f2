"""Each run's records and totals, kept by the audit writer in the transaction of its change.

An entry (RunRecord) is the audit row that stands for one record, or one entity's plan (key
"*"), in one run; the run's row in RunTotals holds the sum of what its entries count for.
Every change of an entry moves the totals by the difference, so a run's progress is one row
to read however many records it has. Only connector.storage.audit calls these (the one
writer of audit rows); connector.storage.runs reads both tables.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.orm import Session

from connector.storage.database import run
from connector.storage.models import AuditRecord, RunRecord, RunTotals, table_of, utcnow
from connector.storage.upsert import dialect_insert, upsert

PLAN_KEY = "*"
ENTRY_KEY = ("run_id", "entity", "record_key")
COUNTERS = (
    "plans",
    "entities_planned",
    "planned",
    "plans_failed",
    "done",
    "retrying",
    "records_failed",
)


# The columns of a run entry `enter` writes.
_ENTRY = (
    "run_id",
    "entity",
    "record_key",
    "tenant",
    "audit_id",
    "status",
    "queued",
    "started_at",
    "finished_at",
)


@dataclass(frozen=True)
class _Entry:
    plan: bool
    status: str
    queued: int

    def counts(self) -> dict[str, int]:
        # Imported here: the audit writer imports this module.
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

        if not self.plan:
            # Replayed, superseded and deferred records are over for their run (the replay
            # or later fix is not the run's own), as run_summary counts them.
            done = self.status in (SUCCEEDED, SKIPPED, REPLAYED, SUPERSEDED, DEFERRED)
            return {
                "done": int(done),
                "retrying": int(self.status == RETRYING),
                "records_failed": int(self.status == FAILED),
            }
        # A superseded plan was retried with success by the entry that replaced it; one
        # still retrying has queued nothing for good yet.
        planned = self.status in FINAL_STATUSES and self.status != SUPERSEDED
        return {
            "plans": 1,
            "entities_planned": int(planned),
            "planned": self.queued if planned else 0,
            "plans_failed": int(planned and self.status in (FAILED, DEFERRED)),
        }


def _difference(old: _Entry | None, new: _Entry) -> dict[str, int]:
    moved = dict.fromkeys(COUNTERS, 0)
    for name, value in new.counts().items():
        moved[name] += value
    for name, value in (old.counts() if old is not None else {}).items():
        moved[name] -= value
    return moved


def enter(session: Session, row: AuditRecord, started_at: datetime | None = None) -> None:
    """Make `row` the record's attempt in its run (a newer row of the record replaces it);
    `started_at` is when this attempt began, for a folded row whose own is its first."""
    if row.correlation_id is None:
        return
    plan = row.record_key == PLAN_KEY
    queued = int((row.response_summary or {}).get("queued", 0)) if plan else None
    started = started_at or row.started_at
    finished = row.finished_at or utcnow()
    values = {
        "run_id": row.correlation_id,
        "entity": row.entity,
        "record_key": row.record_key,
        "tenant": row.tenant,
        "audit_id": row.id,
        "status": row.status,
        "queued": queued,
        "started_at": started,
        "finished_at": finished,
    }
    totals = {
        "run_id": row.correlation_id,
        "tenant": row.tenant,
        "planned_at": finished if plan else None,
        "started_at": started,
        "finished_at": finished,
        **_difference(None, _Entry(plan, row.status, queued or 0)),
    }
    # The record's first row in the run (the usual case): a new entry moves the totals by
    # its own counts, and nobody else can hold an entry that is not committed yet.
    if _enter_new(session, values, totals):
        return
    # The run has an entry for the record already: read it locked, so that the totals move
    # by exactly the difference from what it stood for, whoever else changes it meanwhile
    # (restate by mark_failed/mark_replayed, another attempt of the record).
    key = (
        RunRecord.run_id == row.correlation_id,
        RunRecord.entity == row.entity,
        RunRecord.record_key == row.record_key,
    )
    before = session.execute(
        select(RunRecord.status, RunRecord.queued).where(*key).with_for_update()
    ).first()
    upsert(session, RunRecord, values, key=ENTRY_KEY)
    old = _Entry(plan, before.status, before.queued or 0) if before is not None else None
    _move(
        session,
        row.correlation_id,
        row.tenant,
        _difference(old, _Entry(plan, row.status, queued or 0)),
        started=started,
        finished=finished,
        planned_at=finished if plan else None,
    )


def _enter_new(session: Session, values: dict[str, Any], totals: dict[str, Any]) -> bool:
    """Insert the entry unless the run has one for the record, and if it was inserted, add
    `totals` to the run's; whether it was. One statement on Postgres (the entry's INSERT a
    data-modifying CTE whose RETURNING feeds the totals' INSERT), two on SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        entry = (
            dialect_insert(session, RunRecord)
            .values(values)
            .on_conflict_do_nothing(index_elements=list(ENTRY_KEY))
            .returning(RunRecord.run_id)
        )
        if session.execute(entry).first() is None:
            return False
        step = {name: totals[name] for name in COUNTERS}
        _move(
            session,
            totals["run_id"],
            totals["tenant"],
            step,
            started=totals["started_at"],
            finished=totals["finished_at"],
            planned_at=totals["planned_at"],
        )
        return True
    statement = _enter_new_statement(planned=totals["planned_at"] is not None)
    parameters = {f"entry_{name}": value for name, value in values.items()}
    parameters.update({f"totals_{name}": value for name, value in totals.items()})
    return bool(run(session, statement, parameters))


@functools.lru_cache(maxsize=2)
def _enter_new_statement(*, planned: bool) -> Any:
    """`_enter_new`'s Postgres statement, built once with bound parameters (`entry_<column>`,
    `totals_<column>`): building it per record, with its cache key, cost more CPU than
    Postgres spent running it."""
    entries, table = table_of(RunRecord), table_of(RunTotals)
    entry = (
        postgresql_insert(entries)
        .values({name: bindparam(f"entry_{name}", type_=entries.c[name].type) for name in _ENTRY})
        .on_conflict_do_nothing(index_elements=list(ENTRY_KEY))
        .returning(entries.c.run_id)
    )
    new = entry.cte("new_entry")
    columns = ["run_id", "tenant", "planned_at", "started_at", "finished_at", *COUNTERS]
    source = select(
        *(bindparam(f"totals_{name}", type_=table.c[name].type).label(name) for name in columns)
    ).select_from(new)
    statement = postgresql_insert(table).from_select(columns, source)
    return (
        _totals_conflict(statement, started=True, finished=True, planned_at=planned)
        .returning(table.c.run_id)
        .add_cte(new)
    )


def restate(session: Session, audit_ids: Sequence[int], status: str) -> None:
    """The rows' status changed: so does every run entry that stands for one of them, and
    the totals of those runs."""
    if not audit_ids:
        return
    entries = session.execute(
        select(
            RunRecord.run_id,
            RunRecord.tenant,
            RunRecord.record_key,
            RunRecord.status,
            RunRecord.queued,
        )
        .where(RunRecord.audit_id.in_(list(audit_ids)))
        .with_for_update()
    ).all()
    if not entries:
        return
    session.execute(
        update(RunRecord).where(RunRecord.audit_id.in_(list(audit_ids))).values(status=status)
    )
    moved: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for run_id, tenant, record_key, old_status, queued in entries:
        plan = record_key == PLAN_KEY
        step = _difference(_Entry(plan, old_status, queued or 0), _Entry(plan, status, queued or 0))
        for name, value in step.items():
            moved[(run_id, tenant)][name] += value
    # One order of row locks for every writer: two writes never wait on each other in a ring.
    for (run_id, tenant), step in sorted(moved.items()):
        _move(session, run_id, tenant, step)


def _move(
    session: Session,
    run_id: str,
    tenant: str,
    step: dict[str, int],
    *,
    started: datetime | None = None,
    finished: datetime | None = None,
    planned_at: datetime | None = None,
) -> None:
    """Add `step` to the run's totals (made on its first entry), widen its time span."""
    statement = dialect_insert(session, RunTotals).values(
        run_id=run_id,
        tenant=tenant,
        planned_at=planned_at,
        started_at=started,
        finished_at=finished,
        **step,
    )
    session.execute(
        _totals_conflict(
            statement,
            started=started is not None,
            finished=finished is not None,
            planned_at=planned_at is not None,
        )
    )


def _totals_conflict(statement: Any, *, started: bool, finished: bool, planned_at: bool) -> Any:
    """`statement` (an INSERT of a run's totals) adding its counters to a row there already
    and widening its time span by the given ones."""
    table = RunTotals.__table__.c
    new = statement.excluded
    changes: dict[str, Any] = {name: table[name] + new[name] for name in COUNTERS}
    if started:
        changes["started_at"] = case(
            (table.started_at.is_(None), new.started_at),
            (new.started_at < table.started_at, new.started_at),
            else_=table.started_at,
        )
    if finished:
        changes["finished_at"] = case(
            (table.finished_at.is_(None), new.finished_at),
            (new.finished_at > table.finished_at, new.finished_at),
            else_=table.finished_at,
        )
    if planned_at:
        changes["planned_at"] = case(
            (table.planned_at.is_(None), new.planned_at),
            (new.planned_at > table.planned_at, new.planned_at),
            else_=table.planned_at,
        )
    return statement.on_conflict_do_update(index_elements=["run_id"], set_=changes)
