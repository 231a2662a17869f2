"""Small per-tenant facts learnt from the remotes (field keys, pipeline ids): tenant_state."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import select

from connector.storage.database import Database
from connector.storage.models import TenantState, utcnow
from connector.storage.upsert import upsert


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
        with self.database.session() as session:
            upsert(
                session,
                TenantState,
                {"tenant": tenant, "key": key, "value": dict(value), "updated_at": utcnow()},
                key=("tenant", "key"),
            )

    def with_key(self, key: str) -> dict[str, dict[str, Any]]:
        """Every tenant's value under `key`, by tenant."""
        with self.database.session() as session:
            rows = session.scalars(select(TenantState).where(TenantState.key == key))
            return {row.tenant: dict(row.value) for row in rows}

    def delete(self, tenant: str, key: str) -> None:
        with self.database.session() as session:
            row = session.get(TenantState, (tenant, key))
            if row is not None:
                session.delete(row)
