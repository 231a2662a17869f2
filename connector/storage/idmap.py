"""The id map: which Pipedrive record stands for which IFS record, and what was last pushed."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from connector.storage.database import Database
from connector.storage.models import IdMapEntry, table_of, utcnow
from connector.storage.upsert import upsert

CUSTOMER = "customer"
ORDER = "order"


def content_hash(payload: dict[str, Any]) -> str:
    """A stable hash of mapped content: equal payloads, equal hashes."""
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


_COLUMNS = tuple(column.key for column in table_of(IdMapEntry).columns)


@functools.lru_cache(maxsize=8)
def _entries_statement(count: int) -> Any:
    """`IdMap.get_many`'s read of `count` entries, built once (see database.run)."""
    table = table_of(IdMapEntry)
    return select(*(table.c[name] for name in _COLUMNS)).where(
        table.c.tenant == bindparam("tenant"),
        or_(
            *(
                (table.c.entity == bindparam(f"entity_{index}"))
                & (table.c.ifs_key == bindparam(f"ifs_key_{index}"))
                for index in range(count)
            )
        ),
    )


class PushedState(NamedTuple):
    """The id-map columns a plan needs for one record."""

    pipedrive_id: int | None
    etag: str | None
    content_hash: str | None
    tombstoned: bool = False
    ifs_missing: bool = False  # gone from IFS reads, handled by on_ifs_missing


class IdMap:
    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, tenant: str, entity: str, ifs_key: str) -> IdMapEntry | None:
        with self.database.session() as session:
            return session.scalar(
                select(IdMapEntry).where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.ifs_key == ifs_key,
                )
            )

    def get_many(
        self, tenant: str, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], IdMapEntry]:
        """The entries of several (entity, IFS key) pairs of one tenant in one statement (a
        record and its parent), outside a transaction; absent pairs are left out."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        parameters: dict[str, Any] = {"tenant": tenant}
        for index, (entity, ifs_key) in enumerate(wanted):
            parameters[f"entity_{index}"], parameters[f"ifs_key_{index}"] = entity, ifs_key
        rows = self.database.fetch(_entries_statement(len(wanted)), parameters)
        # Detached entries, as a session's would be once it closed: only read.
        entries = [IdMapEntry(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]
        return {(entry.entity, entry.ifs_key): entry for entry in entries}

    def by_pipedrive_id(self, tenant: str, entity: str, pipedrive_id: int) -> IdMapEntry | None:
        """The entry linked to a Pipedrive record; of several (a relinked record), the oldest."""
        with self.database.session() as session:
            return session.scalar(
                select(IdMapEntry)
                .where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.pipedrive_id == pipedrive_id,
                )
                .order_by(IdMapEntry.id)
                .limit(1)
            )

    def linked_pipedrive_ids(self, tenant: str, entity: str) -> set[int]:
        """The Pipedrive ids of every linked record of one tenant and entity."""
        with self.database.session() as session:
            ids = session.scalars(
                select(IdMapEntry.pipedrive_id).where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.pipedrive_id.is_not(None),
                )
            )
            return {int(pipedrive_id) for pipedrive_id in ids if pipedrive_id is not None}

    def summaries(self, tenant: str, entity: str) -> dict[str, PushedState]:
        """What was last pushed for every record of one tenant and entity, by IFS key.

        Only the columns a plan compares: a full row (with its last payload) per record would
        make planning a large tenant cost several KB per record.
        """
        with self.database.session() as session:
            rows = session.execute(
                select(
                    IdMapEntry.ifs_key,
                    IdMapEntry.pipedrive_id,
                    IdMapEntry.etag,
                    IdMapEntry.content_hash,
                    IdMapEntry.tombstoned_at,
                    IdMapEntry.ifs_missing_at,
                ).where(IdMapEntry.tenant == tenant, IdMapEntry.entity == entity)
            )
            return {
                key: PushedState(pid, etag, digest, tombstoned is not None, missing is not None)
                for key, pid, etag, digest, tombstoned, missing in rows
            }

    def save(
        self,
        tenant: str,
        entity: str,
        ifs_key: str,
        *,
        pipedrive_id: int | None = None,
        etag: str | None = None,
        payload: dict[str, Any] | None = None,
        last_event_at: datetime | None = None,
        session: Session | None = None,
    ) -> None:
        """Insert or update the entry; only the given fields change. `session`: join the
        caller's transaction (a record's id-map change commits with its audit row)."""
        changes: dict[str, Any] = {}
        if pipedrive_id is not None:
            changes["pipedrive_id"] = pipedrive_id
        if etag is not None:
            changes["etag"] = etag
        if payload is not None:
            changes["last_payload"] = payload
            changes["content_hash"] = content_hash(payload)
        if last_event_at is not None:
            changes["last_event_at"] = last_event_at
        if changes:
            changes["updated_at"] = utcnow()
        if session is not None:
            self._upsert(session, tenant, entity, ifs_key, changes)
            return
        with self.database.session() as own:
            self._upsert(own, tenant, entity, ifs_key, changes)

    @staticmethod
    def _upsert(
        session: Session, tenant: str, entity: str, ifs_key: str, changes: dict[str, Any]
    ) -> None:
        upsert(
            session,
            IdMapEntry,
            {"tenant": tenant, "entity": entity, "ifs_key": ifs_key, **changes},
            key=("tenant", "entity", "ifs_key"),
            update=changes,
        )

    def load(
        self, tenant: str, entries: Iterable[tuple[str, str, int, str, dict[str, Any] | None]]
    ) -> int:
        """Replace the tenant's whole id map with `entries` (entity, IFS key, Pipedrive id,
        ETag, last payload) in one statement: restoring a map, or preparing a benchmark."""
        rows = [
            {
                "tenant": tenant,
                "entity": entity,
                "ifs_key": ifs_key,
                "pipedrive_id": pipedrive_id,
                "etag": etag,
                "last_payload": payload,
                "content_hash": content_hash(payload) if payload is not None else None,
            }
            for entity, ifs_key, pipedrive_id, etag, payload in entries
        ]
        with self.database.session() as session:
            session.execute(delete(IdMapEntry).where(IdMapEntry.tenant == tenant))
            if rows:
                session.execute(insert(IdMapEntry), rows)
        return len(rows)

    def relink(self, tenant: str, entity: str, ifs_key: str, pipedrive_id: int | None) -> None:
        """Point the entry at another Pipedrive record (a merge survivor), or at none (the
        record was deleted: the next sync finds or creates one). The tombstone goes, and the
        content hash too: what the new record holds is unknown until it is read. The last
        payload stays: it tells which values the connector itself last wrote."""
        with self.database.session() as session:
            session.execute(
                update(IdMapEntry)
                .where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.ifs_key == ifs_key,
                )
                .values(
                    pipedrive_id=pipedrive_id,
                    content_hash=None,
                    tombstoned_at=None,
                    tombstone_reason=None,
                    updated_at=utcnow(),
                )
            )

    def tombstone(self, tenant: str, entity: str, ifs_key: str, reason: str) -> bool:
        """Mark the entry deleted in Pipedrive (policy respect): no writes until relinked.
        The Pipedrive id stays, for the record's history; False if it was tombstoned already."""
        with self.database.session() as session:
            result = session.execute(
                update(IdMapEntry)
                .where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.ifs_key == ifs_key,
                    IdMapEntry.tombstoned_at.is_(None),
                )
                .values(tombstoned_at=utcnow(), tombstone_reason=reason, updated_at=utcnow())
            )
            return bool(getattr(result, "rowcount", 0))

    def mark_ifs_missing(self, tenant: str, entity: str, ifs_key: str, missing: bool) -> None:
        """Remember that IFS no longer has the record (its on_ifs_missing policy was applied),
        or forget it again (IFS has it again)."""
        with self.database.session() as session:
            session.execute(
                update(IdMapEntry)
                .where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.ifs_key == ifs_key,
                )
                .values(ifs_missing_at=utcnow() if missing else None, updated_at=utcnow())
            )

    def tombstoned_keys(self, tenant: str, entity: str) -> list[str]:
        """The IFS keys of the tenant's tombstoned entries of one entity."""
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(IdMapEntry.ifs_key)
                    .where(
                        IdMapEntry.tenant == tenant,
                        IdMapEntry.entity == entity,
                        IdMapEntry.tombstoned_at.is_not(None),
                    )
                    .order_by(IdMapEntry.ifs_key)
                )
            )

    def advance_last_event(
        self,
        tenant: str,
        entity: str,
        pipedrive_id: int,
        moment: datetime,
        *,
        session: Session | None = None,
    ) -> None:
        """Record `moment` as the newest handled event of the linked record, monotonically:
        a concurrent newer time is never replaced by an older one. `session`: join the
        caller's transaction (the event's outcome and this time commit together)."""
        statement = (
            update(IdMapEntry)
            .where(
                IdMapEntry.tenant == tenant,
                IdMapEntry.entity == entity,
                IdMapEntry.pipedrive_id == pipedrive_id,
                or_(IdMapEntry.last_event_at.is_(None), IdMapEntry.last_event_at < moment),
            )
            .values(last_event_at=moment)
        )
        if session is not None:
            session.execute(statement)
            return
        with self.database.session() as own:
            own.execute(statement)
