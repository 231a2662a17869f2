"""The one writer of work items: records planned per tenant, released in budget, finished.

A plan stores what it found instead of queueing it (connector.dispatch releases it); a task
that ends finishes its item (one DELETE by primary key), a transient ending gives it back
with a time before which it is not released again, and the dispatcher re-releases items
released so long ago that their message must have been lost (a dead worker, a broker that
lost its queue).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from connector.storage.database import Database, run
from connector.storage.models import WORK_ITEM_TRIED, WorkItemRecord, aware, table_of, utcnow
from connector.storage.upsert import insert_many_if_absent

# The tenants with waiting items, one index probe per tenant (a loose index scan over
# ix_work_items_waiting) instead of reading every waiting row: the same SQL on both databases.
_WAITING_TENANTS = text(
    """
    WITH RECURSIVE waiting(tenant) AS (
        SELECT min(tenant) FROM work_items WHERE released_at IS NULL
        UNION ALL
        SELECT (
            SELECT min(tenant) FROM work_items
            WHERE released_at IS NULL AND tenant > waiting.tenant
        )
        FROM waiting WHERE waiting.tenant IS NOT NULL
    )
    SELECT tenant FROM waiting WHERE tenant IS NOT NULL
    """
)

# Built once: a record's transaction ends its item with it (connector.storage.database.run).
_FINISH = delete(table_of(WorkItemRecord)).where(
    table_of(WorkItemRecord).c.id == bindparam("item_id")
)


@functools.lru_cache(maxsize=2)
def _tried_before_statement(others: bool) -> Any:
    """`WorkItems.tried_before`'s read, built once; `others`: leave out the item `mine`."""
    table = table_of(WorkItemRecord)
    conditions: list[Any] = [
        table.c.tenant == bindparam("tenant"),
        table.c.entity == bindparam("entity"),
        table.c.record_key == bindparam("record_key"),
        text(f"({WORK_ITEM_TRIED})"),  # parenthesized: an OR among ANDs
    ]
    if others:
        conditions.append(table.c.id != bindparam("mine"))
    return select(func.min(table.c.created_at)).where(*conditions)


@dataclass(frozen=True)
class ReleasedItem:
    """A work item on its way to the bulk queue: the job to send and its arguments."""

    id: int
    tenant: str
    entity: str
    record_key: str
    job: str
    kwargs: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class StoredBacklog:
    """A tenant's stored items as `status` shows them."""

    waiting: int = 0  # not released (due now or later)
    due: int = 0  # of those, releasable now (no retry delay left)
    in_flight: int = 0  # released, not finished
    oldest_waiting_at: datetime | None = None  # when the oldest waiting item was stored
    next_due_at: datetime | None = None  # when the first delayed item is due, if none is now


def _released(row: WorkItemRecord) -> ReleasedItem:
    return ReleasedItem(
        row.id, row.tenant, row.entity, row.record_key, row.job, dict(row.kwargs), row.attempts
    )


class WorkItems:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, tenant: str, run_id: str, job: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Store one page of a plan (each item the task's kwargs, with `entity` and `key`);
        an item this run stored already is left as it is. The number of rows sent."""
        now = utcnow()
        rows = [
            {
                "tenant": tenant,
                "entity": str(item["entity"]),
                "record_key": str(item["key"]),
                "run_id": run_id,
                "job": job,
                "kwargs": {name: value for name, value in item.items() if name != "entity"},
                "attempts": 0,
                "created_at": now,
            }
            for item in items
        ]

        def work(session: Session) -> None:
            insert_many_if_absent(
                session, WorkItemRecord, rows, key=("run_id", "entity", "record_key")
            )

        self.database.transaction(work)
        return len(rows)

    def waiting_tenants(self) -> list[str]:
        """Tenants with items not released (due now or later), in name order."""

        def work(session: Session) -> Any:
            return [str(tenant) for (tenant,) in session.execute(_WAITING_TENANTS)]

        return list(self.database.read(work))

    def in_flight(self) -> dict[str, int]:
        """Released, unfinished items per tenant."""

        def work(session: Session) -> Any:
            return session.execute(
                select(WorkItemRecord.tenant, func.count())
                .where(WorkItemRecord.released_at.is_not(None))
                .group_by(WorkItemRecord.tenant)
            ).all()

        rows = self.database.read(work)
        return {str(tenant): int(count) for tenant, count in rows}

    def release(self, quotas: Mapping[str, int]) -> dict[str, list[ReleasedItem]]:
        """Mark up to `quotas[tenant]` of each tenant's oldest due items released, in one
        transaction; what was released, per tenant, oldest first."""
        now = utcnow()

        def work(session: Session) -> dict[str, list[ReleasedItem]]:
            found: dict[str, list[ReleasedItem]] = {}
            for tenant, quota in quotas.items():
                if quota <= 0:
                    continue
                rows = list(
                    session.scalars(
                        select(WorkItemRecord)
                        .where(
                            WorkItemRecord.tenant == tenant,
                            WorkItemRecord.released_at.is_(None),
                            or_(
                                WorkItemRecord.not_before.is_(None),
                                WorkItemRecord.not_before <= now,
                            ),
                        )
                        .order_by(WorkItemRecord.id)
                        .limit(quota)
                        # Two dispatchers at once (a lease handed over) never take one item twice.
                        .with_for_update(skip_locked=True)
                    )
                )
                if rows:
                    found[tenant] = [_released(row) for row in rows]
            ids = [item.id for items in found.values() for item in items]
            if ids:
                session.execute(
                    update(WorkItemRecord)
                    .where(WorkItemRecord.id.in_(ids))
                    .values(released_at=now)
                    .execution_options(synchronize_session=False)
                )
            return found

        return self.database.transaction(work)

    def still_released(self, ids: Sequence[int]) -> set[int]:
        """Those of `ids` still released and unfinished (a redelivered batch's message runs
        only these: the others ended, or went back to wait for a release of their own)."""
        if not ids:
            return set()

        def work(session: Session) -> Any:
            return session.scalars(
                select(WorkItemRecord.id).where(
                    WorkItemRecord.id.in_(list(ids)), WorkItemRecord.released_at.is_not(None)
                )
            ).all()

        return {int(item_id) for item_id in self.database.read(work)}

    def unrelease(self, ids: Sequence[int]) -> None:
        """Put released items back unchanged (their messages could not be sent)."""
        if not ids:
            return

        def work(session: Session) -> None:
            session.execute(
                update(WorkItemRecord)
                .where(WorkItemRecord.id.in_(list(ids)))
                .values(released_at=None)
                .execution_options(synchronize_session=False)
            )

        self.database.transaction(work)

    def finish(self, item_id: int, *, session: Session | None = None) -> None:
        """The item's task ended for good (its audit row says how). `session`: join the
        caller's transaction (a record's audit row and its item's end commit together)."""
        if session is not None:
            run(session, _FINISH, {"item_id": item_id})
            return
        self.database.transaction(lambda own: run(own, _FINISH, {"item_id": item_id}))

    def tried_before(
        self, tenant: str, entity: str, record_key: str, *, mine: int | None, mine_too: bool
    ) -> datetime | None:
        """When the oldest stored item of the record that may have had an attempt already
        (released now, or released before and put back) was stored; None if there is none.

        An item released and never finished is the trace a crashed attempt leaves: its POST
        may have reached Pipedrive. `mine`: the item of the asking attempt, counted only with
        `mine_too` (its own message says it may not be the first: a redelivery or retry)."""
        parameters: dict[str, Any] = {"tenant": tenant, "entity": entity, "record_key": record_key}
        others = mine is not None and not mine_too
        if others:
            parameters["mine"] = mine
        rows = self.database.fetch(_tried_before_statement(others), parameters)
        found: datetime | None = rows[0][0] if rows else None
        return aware(found) if found is not None else None

    def give_back(self, item_id: int, *, not_before: datetime, attempts: int) -> None:
        """The item's task ended transiently: release it again from `not_before` on."""

        def work(session: Session) -> None:
            session.execute(
                update(WorkItemRecord)
                .where(WorkItemRecord.id == item_id)
                .values(released_at=None, not_before=not_before, attempts=attempts)
            )

        self.database.transaction(work)

    def sweep_stale(
        self, released_before: datetime, max_attempts: int
    ) -> tuple[list[ReleasedItem], int]:
        """Items released before `released_before` never finished: their message was lost or
        their worker died. Each goes back to waiting, counted as an attempt; one that has had
        `max_attempts` already is removed instead (its task never ends). (Removed items, the
        number put back.)"""

        def work(session: Session) -> tuple[list[ReleasedItem], int]:
            stale = WorkItemRecord.released_at < released_before
            exhausted = list(
                session.scalars(
                    select(WorkItemRecord).where(stale, WorkItemRecord.attempts + 1 >= max_attempts)
                )
            )
            dropped = [_released(row) for row in exhausted]
            if dropped:
                session.execute(
                    delete(WorkItemRecord).where(WorkItemRecord.id.in_([i.id for i in dropped]))
                )
            result: Any = session.execute(
                update(WorkItemRecord)
                .where(stale)
                .values(released_at=None, attempts=WorkItemRecord.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            return dropped, int(result.rowcount or 0)

        return self.database.transaction(work)

    def backlog(self, tenant: str) -> tuple[int, int]:
        """(waiting, in flight) items of `tenant`."""

        def work(session: Session) -> Any:
            return session.execute(
                select(WorkItemRecord.released_at.is_(None), func.count())
                .where(WorkItemRecord.tenant == tenant)
                .group_by(WorkItemRecord.released_at.is_(None))
            ).all()

        rows = self.database.read(work)
        counts = {bool(waiting): int(count) for waiting, count in rows}
        return counts.get(True, 0), counts.get(False, 0)

    def stored(self, tenant: str, *, now: datetime | None = None) -> StoredBacklog:
        """What `tenant` has stored: waiting (and due of it), in flight, the oldest waiting
        item's age and the next delayed one's time. One aggregate over the tenant's rows."""
        moment = now or utcnow()
        waiting = WorkItemRecord.released_at.is_(None)
        due = waiting & or_(
            WorkItemRecord.not_before.is_(None), WorkItemRecord.not_before <= moment
        )
        delayed = waiting & (WorkItemRecord.not_before > moment)

        def work(session: Session) -> Any:
            return session.execute(
                select(
                    func.count().filter(waiting),
                    func.count().filter(due),
                    func.count().filter(WorkItemRecord.released_at.is_not(None)),
                    func.min(WorkItemRecord.created_at).filter(waiting),
                    func.min(WorkItemRecord.not_before).filter(delayed),
                ).where(WorkItemRecord.tenant == tenant)
            ).one()

        row = self.database.read(work)
        return StoredBacklog(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])

    def waiting_by_tenant(self) -> dict[str, int]:
        """Items waiting per tenant with any (one probe per such tenant, then its count)."""

        def work(session: Session) -> Any:
            tenants = [str(tenant) for (tenant,) in session.execute(_WAITING_TENANTS)]
            return {
                tenant: int(
                    session.scalar(
                        select(func.count()).where(
                            WorkItemRecord.tenant == tenant, WorkItemRecord.released_at.is_(None)
                        )
                    )
                    or 0
                )
                for tenant in tenants
            }

        return dict(self.database.read(work))

    def forget(self, tenant: str) -> int:
        """Remove every item of `tenant` (a tenant taken out of service); how many there were."""

        def work(session: Session) -> Any:
            result: Any = session.execute(
                delete(WorkItemRecord).where(WorkItemRecord.tenant == tenant)
            )
            return int(result.rowcount or 0)

        return int(self.database.transaction(work))
