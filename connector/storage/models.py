"""The connector's tables: vault, id map, audit log, webhook events and refusals, watermarks,
tenant state, run records, work items."""

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
    Table,
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


def aware(moment: datetime) -> datetime:
    """A stored moment with its zone: SQLite drops it, and stored values are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def table_of(model: type[Base]) -> Table:
    """The model's table, typed as one (a declarative `__table__` is typed as any FROM)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


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
    # Gone from IFS reads and handled by lifecycle policy on_ifs_missing; cleared on return.
    ifs_missing_at: Mapped[datetime | None] = mapped_column(nullable=True)


# Rows latest_failed may list (its other condition, no newer row, is not an index's).
FAILED_WAITING = "status = 'failed' AND replay_task IS NOT NULL AND record_key <> '*'"


class AuditRecord(Base):
    """One attempt to move one record, successful or not; failed ones can be replayed."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_tenant_status", "tenant", "status", "started_at"),
        # A record's rows in one direction, by id: its newest row (the writer's fold), and
        # "is there a newer one" for each waiting failure, answered from the index alone.
        Index("ix_audit_record", "tenant", "entity", "record_key", "direction", "id"),
        # run_summary and latest_run read a run's rows by correlation id; the console's Runs page
        # and Failures page must not scan the whole log for that.
        Index("ix_audit_correlation", "correlation_id", "entity", "record_key", "id"),
        Index("ix_audit_status", "status", "id"),
        Index("ix_audit_operation", "operation", "id"),  # plan rows: the newest runs
        # The failures waiting (latest_failed): a few rows, wherever they are in the log.
        Index(
            "ix_audit_failed",
            "tenant",
            "entity",
            "record_key",
            "direction",
            "id",
            postgresql_where=text(FAILED_WAITING),
            sqlite_where=text(FAILED_WAITING),
        ),
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


class RunRecord(Base):
    """Where one record stands in one sync run: the audit row that is its attempt there.

    Kept by the audit writer with each row it writes or changes, so a run's progress is a
    count over its own records (the Runs page), never a search for each record's newest row
    in the log. A folded failure stands in the run it folded into and stays in the earlier
    run(s) where it failed, with its current status. Plans are the rows with key "*".
    """

    __tablename__ = "run_records"
    __table_args__ = (
        Index("ix_run_records_audit", "audit_id"),  # the entries of a row whose status moved
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    record_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    audit_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    queued: Mapped[int | None] = mapped_column(Integer, nullable=True)  # a plan's records
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RunTotals(Base):
    """One sync run's counts, moved by the audit writer with each change of a run entry
    (RunRecord): the Runs page reads a row per run. Records count by their entry's status;
    plans that are final (and not superseded) count as planned entities with their queue."""

    __tablename__ = "run_totals"
    __table_args__ = (
        Index("ix_run_totals_newest", "planned_at"),
        Index("ix_run_totals_tenant_newest", "tenant", "planned_at"),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    # When its newest plan entry was written (a folded plan too): the newest runs first.
    planned_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    plans: Mapped[int] = mapped_column(Integer, default=0)
    entities_planned: Mapped[int] = mapped_column(Integer, default=0)
    planned: Mapped[int] = mapped_column(Integer, default=0)  # records the final plans queued
    plans_failed: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    retrying: Mapped[int] = mapped_column(Integer, default=0)
    records_failed: Mapped[int] = mapped_column(Integer, default=0)


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


class WebhookRefusal(Base):
    """A refused webhook delivery (bad credentials, unknown tenant, invalid payload, too
    large): when, whose (None: no such tenant), why, from where; never the body or a credential.
    `count` > 1: refusals of the same tenant and reason that came too fast to keep one by one."""

    __tablename__ = "webhook_refusals"
    __table_args__ = (
        Index("ix_webhook_refusals_tenant", "tenant", "refused_at"),
        Index("ix_webhook_refusals_refused_at", "refused_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    refused_at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer)
    remote_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


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


# A work item whose attempt may have run: released now, or released before and put back.
WORK_ITEM_TRIED = "attempts > 0 OR released_at IS NOT NULL"


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
        # A create's question "was this record released before?" (WorkItems.tried_before).
        Index(
            "ix_work_items_tried",
            "tenant",
            "entity",
            "record_key",
            postgresql_where=text(WORK_ITEM_TRIED),
            sqlite_where=text(WORK_ITEM_TRIED),
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
