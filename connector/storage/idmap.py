"""The id map: which Pipedrive record stands for which IFS record, and what was last pushed."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from connector.storage.database import Database
from connector.storage.models import IdMapEntry

CUSTOMER = "customer"
ORDER = "order"


def content_hash(payload: dict[str, Any]) -> str:
    """A stable hash of mapped content: equal payloads, equal hashes."""
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


class PushedState(NamedTuple):
    """The id-map columns a plan needs for one record."""

    pipedrive_id: int | None
    etag: str | None
    content_hash: str | None


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

    def by_pipedrive_id(self, tenant: str, entity: str, pipedrive_id: int) -> IdMapEntry | None:
        with self.database.session() as session:
            return session.scalar(
                select(IdMapEntry).where(
                    IdMapEntry.tenant == tenant,
                    IdMapEntry.entity == entity,
                    IdMapEntry.pipedrive_id == pipedrive_id,
                )
            )

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
                ).where(IdMapEntry.tenant == tenant, IdMapEntry.entity == entity)
            )
            return {key: PushedState(pid, etag, digest) for key, pid, etag, digest in rows}

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
    ) -> None:
        """Insert or update the entry; only the given fields change."""
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
        for _ in range(2):  # a concurrent insert of the same key turns into an update
            try:
                with self.database.session() as session:
                    row = session.scalar(
                        select(IdMapEntry).where(
                            IdMapEntry.tenant == tenant,
                            IdMapEntry.entity == entity,
                            IdMapEntry.ifs_key == ifs_key,
                        )
                    )
                    if row is None:
                        session.add(
                            IdMapEntry(tenant=tenant, entity=entity, ifs_key=ifs_key, **changes)
                        )
                    else:
                        for name, value in changes.items():
                            setattr(row, name, value)
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"id map: could not save {tenant}/{entity}/{ifs_key}")
