"""Watermarks: per tenant and job, where the last delta read stopped and how the run went."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from connector.storage.database import Database
from connector.storage.models import SyncWatermark, utcnow
from connector.storage.upsert import upsert


class Watermarks:
    """Reads and writes of the sync_watermarks table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, tenant: str, entity: str) -> SyncWatermark | None:
        with self.database.session() as session:
            return session.get(SyncWatermark, (tenant, entity))

    def of_tenant(self, tenant: str) -> list[SyncWatermark]:
        """Every watermark of one tenant, by entity."""
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(SyncWatermark)
                    .where(SyncWatermark.tenant == tenant)
                    .order_by(SyncWatermark.entity)
                )
            )

    def record_run(
        self,
        tenant: str,
        entity: str,
        *,
        watermark: str | None,
        status: str,
        summary: dict[str, Any],
    ) -> None:
        """Store where a run got to and how it went (insert or replace, atomically)."""
        with self.database.session() as session:
            upsert(
                session,
                SyncWatermark,
                {
                    "tenant": tenant,
                    "entity": entity,
                    "watermark": watermark,
                    "last_run_at": utcnow(),
                    "last_status": status,
                    "last_summary": dict(summary),
                },
                key=("tenant", "entity"),
            )
