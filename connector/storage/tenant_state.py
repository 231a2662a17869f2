"""Small per-tenant facts learnt from the remotes (field keys, pipeline ids): tenant_state."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from connector.storage.database import Database
from connector.storage.models import TenantState, utcnow


class TenantStateStore(Protocol):
    """Where provisioning caches what it learnt; one JSON object per (tenant, key)."""

    def get(self, tenant: str, key: str) -> dict[str, Any] | None: ...

    def put(self, tenant: str, key: str, value: dict[str, Any]) -> None: ...


class DatabaseTenantState:
    """TenantStateStore over the connector database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, tenant: str, key: str) -> dict[str, Any] | None:
        with self.database.session() as session:
            row = session.get(TenantState, (tenant, key))
            return dict(row.value) if row is not None else None

    def put(self, tenant: str, key: str, value: dict[str, Any]) -> None:
        """Insert or replace, atomically: two workers writing at once both succeed."""
        insert = sqlite_insert if self.database.is_sqlite else postgresql_insert
        now = utcnow()
        statement = insert(TenantState).values(
            tenant=tenant, key=key, value=dict(value), updated_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=["tenant", "key"], set_={"value": dict(value), "updated_at": now}
        )
        with self.database.session() as session:
            session.execute(statement)

    def delete(self, tenant: str, key: str) -> None:
        with self.database.session() as session:
            row = session.get(TenantState, (tenant, key))
            if row is not None:
                session.delete(row)
