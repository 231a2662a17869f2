"""What each console page shows, read through connector.storage and connector.diagnostics only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from connector.cron import CronError, next_run
from connector.diagnostics.freshness import last_successful_syncs_by_tenant, overdue_by
from connector.diagnostics.headroom import IFS, PIPEDRIVE, headroom, usage_history
from connector.diagnostics.status import webhook_status
from connector.diagnostics.urls import public_url
from connector.runtime import Runtime
from connector.storage.audit import AuditLog
from connector.storage.idmap import CUSTOMER, ORDER
from connector.storage.models import AuditRecord, WebhookEvent, WebhookRefusal, utcnow
from connector.storage.runs import RunProgress, recent_runs, runs_progress
from connector.storage.story import RecordStory, record_story
from connector.storage.webhook_events import WebhookEvents
from connector.storage.webhook_refusals import WebhookRefusals
from connector.tenants import TenantConfig, TenantsReading, read_tenants
from console.charts import UsageChart, usage_chart

ENTITIES = (CUSTOMER, ORDER)
PIPEDRIVE_PATHS = {CUSTOMER: "organization", ORDER: "deal"}  # Pipedrive's web UI paths
RECENT_REFUSALS = timedelta(hours=24)  # the tenants page's "refused" count


def tenants_reading(runtime: Runtime) -> TenantsReading:
    """The tenants file read leniently: one broken tenant never hides the others."""
    return read_tenants(runtime.settings.tenants_file)


@dataclass
class EntitySync:
    entity: str
    last_success: datetime | None
    next_run: datetime | None
    overdue: bool


@dataclass
class TenantRow:
    tenant: str
    schedule: str
    syncs: list[EntitySync]
    failed_waiting: int
    webhook: dict[str, Any]
    headroom: dict[str, dict[str, Any]]
    usage: dict[str, UsageChart]  # budget usage over the last day, per system
    refused_recently: int = 0  # webhook deliveries refused within RECENT_REFUSALS

    @property
    def overdue(self) -> bool:
        return any(sync.overdue for sync in self.syncs)


def tenant_rows(runtime: Runtime, reading: TenantsReading) -> list[TenantRow]:
    now = utcnow()
    waiting = AuditLog(runtime.database).failed_waiting()
    last_successes = last_successful_syncs_by_tenant(runtime)
    refused = WebhookRefusals(runtime.database).counts_since(now - RECENT_REFUSALS)
    rows = []
    for tenant_id, tenant in sorted(reading.tenants.items()):
        successes = last_successes.get(tenant_id, {})
        syncs = [_entity_sync(tenant, entity, successes.get(entity), now) for entity in ENTITIES]
        rows.append(
            TenantRow(
                tenant=tenant_id,
                schedule=tenant.schedule,
                syncs=syncs,
                failed_waiting=waiting.get(tenant_id, 0),
                webhook=webhook_status(runtime, tenant_id),
                headroom={
                    IFS: headroom(runtime.coordination, tenant, IFS),
                    PIPEDRIVE: headroom(runtime.coordination, tenant, PIPEDRIVE),
                },
                usage={
                    system: usage_chart(
                        usage_history(runtime.coordination, tenant, system), now, unit
                    )
                    for system, unit in ((IFS, "requests"), (PIPEDRIVE, "tokens"))
                },
                refused_recently=refused.get(tenant_id, 0),
            )
        )
    return rows


def _entity_sync(
    tenant: TenantConfig, entity: str, last_success: datetime | None, now: datetime
) -> EntitySync:
    upcoming: datetime | None
    try:
        upcoming = next_run(tenant.schedule, now)
    except CronError:  # the tenants file validated it; an unreadable one shows as unknown
        upcoming = None
    overdue = last_success is not None and overdue_by(tenant, last_success, now) is not None
    return EntitySync(entity, last_success, upcoming, overdue)


@dataclass
class RunRow:
    progress: RunProgress

    @property
    def duration(self) -> timedelta | None:
        started, finished = self.progress.started_at, self.progress.finished_at
        if started is None:
            return None
        return (utcnow() if self.progress.running or finished is None else finished) - started


def run_rows(runtime: Runtime, tenant: str | None, limit: int = 10) -> list[RunRow]:
    found = runs_progress(runtime.database, recent_runs(runtime.database, tenant, limit))
    return [RunRow(progress) for progress in found]


def group_id(tenant: str, error: str | None) -> str:
    """A short stable name of a failure group (tenant and error text), fit for a URL."""
    return hashlib.sha256(f"{tenant}\0{error or ''}".encode()).hexdigest()[:16]


@dataclass
class FailureGroup:
    tenant: str
    error: str
    rows: list[AuditRecord] = field(default_factory=list)

    @property
    def id(self) -> str:
        return group_id(self.tenant, self.error)

    @property
    def attempts(self) -> int:
        return sum(row.attempt for row in self.rows)

    @property
    def first(self) -> datetime:
        return min(row.started_at for row in self.rows)

    @property
    def last(self) -> datetime:
        return max(row.started_at for row in self.rows)


def failure_groups(runtime: Runtime, tenant: str | None) -> list[FailureGroup]:
    """Records whose newest attempt failed, grouped by tenant and the same error text;
    the largest group first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for row in AuditLog(runtime.database).latest_failed(tenant):
        error = row.error or "(no error text)"
        groups.setdefault((row.tenant, error), FailureGroup(row.tenant, error)).rows.append(row)
    return sorted(groups.values(), key=lambda group: (-len(group.rows), group.tenant))


def rows_of_group(runtime: Runtime, tenant: str, group: str) -> list[AuditRecord]:
    return [
        row
        for row in AuditLog(runtime.database).latest_failed(tenant)
        if group_id(row.tenant, row.error or "(no error text)") == group
    ]


@dataclass
class RecordPage:
    """The record page: the record's story (connector.storage.story) and its Pipedrive link."""

    story: RecordStory
    pipedrive_url: str | None


def record_page(runtime: Runtime, tenant: TenantConfig, entity: str, key: str) -> RecordPage:
    """One record across both directions: sync attempts, stage pushes, webhook events."""
    story = record_story(runtime.database, tenant.id, entity, key)
    url = None
    if story.pipedrive_id is not None:
        base = public_url(str(tenant.pipedrive.api_domain)).rstrip("/")
        url = f"{base}/{PIPEDRIVE_PATHS[entity]}/{story.pipedrive_id}"
    return RecordPage(story, url)


@dataclass
class ReplayOutcome:
    original: AuditRecord
    replays: list[AuditRecord]

    @property
    def state(self) -> str:
        if not self.replays:
            return "queued"
        return self.replays[-1].status


def replay_outcomes(runtime: Runtime, audit_ids: list[int]) -> list[ReplayOutcome]:
    audit = AuditLog(runtime.database)
    replays = audit.replays_of(audit_ids)
    outcomes = []
    for audit_id in audit_ids:
        original = audit.get(audit_id)
        if original is not None:
            mine = [row for row in replays if row.replay_of == audit_id]
            outcomes.append(ReplayOutcome(original, mine))
    return outcomes


def recent_events(runtime: Runtime, tenant: str | None, limit: int = 100) -> list[WebhookEvent]:
    return WebhookEvents(runtime.database).recent(tenant, limit)


def recent_refusals(runtime: Runtime, tenant: str | None, limit: int = 50) -> list[WebhookRefusal]:
    """Refused deliveries, newest first: of one tenant, or of all (unknown tenants too)."""
    return WebhookRefusals(runtime.database).recent(tenant, limit)
