"""The connector's tables: vault, id map, audit log, webhook events, watermarks, tenant state,
work items."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so that Alembic migrations are the same on Postgres and SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Credential(Base):
    """One encrypted secret of a tenant (e.g. pipedrive/api_token, ifs/client_secret)."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("tenant", "system", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    system: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IdMapEntry(Base):
    """IFS key ↔ Pipedrive id of one record, with what was last pushed (change detection)."""

    __tablename__ = "id_map"
    __table_args__ = (
        UniqueConstraint("tenant", "entity", "ifs_key"),
        Index("ix_id_map_pipedrive", "tenant", "entity", "pipedrive_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    entity: Mapped[str] = mapped_column(String(32))  # customer | order
    ifs_key: Mapped[str] = mapped_column(String(128))
    pipedrive_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    etag: Mapped[str | None] = mapped_column(String(256), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Newest Pipedrive event applied to IFS for this record: older deliveries change nothing.
    last_event_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Deleted in Pipedrive under lifecycle policy "respect": no writes until relinked.
    tombstoned_at: Mapped[datetime | None] = mapped_column(nullable=True)
    tombstone_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditRecord(Base):
    """One attempt to move one record, successful or not; failed ones can be replayed."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_tenant_status", "tenant", "status", "started_at"),
        Index("ix_audit_record", "tenant", "entity", "record_key"),
        # run_summary and latest_run read a run's rows by correlation id; the console's Runs page
        # and Failures page must not scan the whole log for that.
        Index("ix_audit_correlation", "correlation_id", "entity", "record_key", "id"),
        Index("ix_audit_status", "status", "id"),
        Index("ix_audit_operation", "operation", "id"),  # plan rows: the newest runs
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    direction: Mapped[str] = mapped_column(String(32))  # ifs_to_pipedrive | pipedrive_to_ifs
    entity: Mapped[str] = mapped_column(String(32))
    record_key: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(32))  # create | update | unchanged | push …
    status: Mapped[str] = mapped_column(String(16))  # connector.storage.audit.STATUSES
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # Identical failures of one record folded into this row (first: started_at, last:
    # finished_at), instead of a new row per scheduled run.
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    response_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What to run again on replay: task name and its keyword arguments.
    replay_task: Mapped[str | None] = mapped_column(String(64), nullable=True)
    replay_args: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    replay_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Who queued the replay of this (failed) row and when: an operator's name from the console,
    # `cli:<user>` from the command line; set with the status change to replayed.
    replayed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    replayed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebhookEvent(Base):
    """A received, authenticated Pipedrive webhook event; the unique key drops duplicates."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("tenant", "event_id"),
        # The console's webhook page and a record's story read a tenant's newest events.
        Index("ix_webhook_events_tenant_received", "tenant", "received_at"),
        Index("ix_webhook_events_entity", "tenant", "entity", "entity_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    event_id: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    change_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    event_time: Mapped[datetime | None] = mapped_column(nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="received")
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SyncWatermark(Base):
    """Per tenant and entity: where the last delta read stopped, and how the last run went."""

    __tablename__ = "sync_watermarks"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    watermark: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class TenantState(Base):
    """Small per-tenant facts learnt from the remotes: field keys, stage ids, webhook id."""

    __tablename__ = "tenant_state"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkItemRecord(Base):
    """One record a plan found to need work, held until the dispatcher releases it to the bulk
    queue within its tenant's budget; deleted when its task finishes (connector.dispatch)."""

    __tablename__ = "work_items"
    __table_args__ = (
        # A plan retried after a transient error plans the same records again: stored once.
        UniqueConstraint("run_id", "entity", "record_key"),
        # The dispatcher's reads: a tenant's oldest waiting items, the tenants with any waiting
        # (a loose index scan), and what is in flight (few rows: partial indexes stay small).
        Index(
            "ix_work_items_waiting",
            "tenant",
            "id",
            postgresql_where=text("released_at IS NULL"),
            sqlite_where=text("released_at IS NULL"),
        ),
        Index(
            "ix_work_items_released",
            "released_at",
            postgresql_where=text("released_at IS NOT NULL"),
            sqlite_where=text("released_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    entity: Mapped[str] = mapped_column(String(32))
    record_key: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(64))
    job: Mapped[str] = mapped_column(String(64))
    # The task's keyword arguments (snapshot, hint, full, run_id, …) as the plan made them.
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Attempts that ended transiently so far (the next release runs attempt `attempts + 1`).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Not to be released before this time (a retry's backoff, a limiter's wait).
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
