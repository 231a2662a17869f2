"""A tenant's stored status: last run, failures waiting, stored records, webhook, missing
secrets, headroom."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connector.diagnostics.backlog import LONG_HOLDS, stored_backlog
from connector.diagnostics.freshness import last_successful_syncs, overdue_by
from connector.diagnostics.headroom import IFS, PIPEDRIVE, headroom
from connector.errors import ConnectorError
from connector.storage.audit import AuditLog
from connector.storage.runs import latest_run, run_summary
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.vault import required_credentials
from connector.storage.watermarks import Watermarks
from connector.storage.webhook_events import WebhookEvents, WebhookEventStatus
from connector.webhooks import registration

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig


@dataclass
class TenantStatus:
    """What the database and our limiter know about a tenant (plus Pipedrive's view if asked)."""

    tenant: str
    last_run: dict[str, Any] | None = None
    failed_waiting: int = 0
    failed_keys: list[str] = field(default_factory=list)
    watermarks: list[dict[str, Any]] = field(default_factory=list)
    last_success: dict[str, str | None] = field(default_factory=dict)
    overdue: list[dict[str, str]] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=dict)
    missing_credentials: list[dict[str, str]] = field(default_factory=list)
    headroom: dict[str, Any] = field(default_factory=dict)
    # Stored records: waiting, due, in flight, the oldest, and what they wait for.
    backlog: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # A tenant whose section of the tenants file does not validate: only its problems.
    config_problems_only: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def last_run(runtime: Runtime, tenant_id: str) -> dict[str, Any] | None:
    """The newest sync run of the tenant (by its plan rows) and how it went."""
    database = runtime.database
    newest = latest_run(database, tenant_id)
    if newest is None:
        return None
    run_id, started, finished = newest
    summary = run_summary(database, run_id)
    state = "finished" if summary.done >= summary.queued else "running"
    return {
        "run_id": run_id,
        "started_at": _iso(started),
        "finished_at": _iso(finished) if state == "finished" else None,
        "state": state,
        "created": summary.created,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "read": summary.read,
        "queued": summary.queued,
        "retrying": summary.retrying,
        "last_retry_error": summary.last_retry_error,
        "plan_errors": summary.plan_errors,
    }


def webhook_status(runtime: Runtime, tenant_id: str, *, remote: bool = False) -> dict[str, Any]:
    """Registration (tenant_state), received events, and with `remote` Pipedrive's own list."""
    state = DatabaseTenantState(runtime.database).get(tenant_id, registration.STATE_KEY)
    events = WebhookEvents(runtime.database)
    delivered = events.delivered(tenant_id)
    failed = events.counts_by_status(tenant_id).get(WebhookEventStatus.FAILED, 0)
    info: dict[str, Any] = {
        "registered": state is not None,
        "webhook_id": (state or {}).get("webhook_id"),
        "subscription_url": (state or {}).get("subscription_url"),
        "last_event_at": _iso(delivered.last_received_at),
        "events_received": delivered.count,
        "events_failed": failed,
    }
    if remote:
        try:
            found = registration.webhooks_for(runtime, tenant_id)
        except ConnectorError as error:
            info["remote"] = {"error": str(error)}
        else:
            info["remote"] = {
                "webhooks": [
                    {
                        key: webhook.get(key)
                        for key in ("id", "is_active", "last_delivery_time", "last_http_status")
                    }
                    for webhook in found
                ],
                "active": any(webhook.get("is_active", True) for webhook in found),
            }
    return info


def missing_credentials(runtime: Runtime, tenant: TenantConfig) -> list[dict[str, str]]:
    """Secrets the tenant's configuration needs that the vault lacks, each with its fix."""
    stored = {(system, name) for _, system, name, _ in runtime.vault.names(tenant.id)}
    missing = []
    for system, name in required_credentials(tenant):
        if (system, name) in stored:
            continue
        if system == "webhook" and name.startswith("basic_"):
            fix = f"`ml-connector webhooks ensure {tenant.id}` (generates and stores them)"
        else:
            fix = f"`ml-connector credentials set {tenant.id} {system} {name}`"
        missing.append({"system": system, "name": name, "fix": fix})
    return missing


def _overdue(status: TenantStatus, runtime: Runtime, tenant: TenantConfig, now: datetime) -> None:
    for entity, moment in sorted(last_successful_syncs(runtime, tenant.id).items()):
        status.last_success[entity] = _iso(moment)
        due = overdue_by(tenant, moment, now)
        if due is not None:
            status.overdue.append({"entity": entity, "due": due.isoformat()})
            status.problems.append(
                f"overdue: {entity} last synced successfully at {moment.isoformat()}; the "
                f"schedule {tenant.schedule!r} wanted a sync by {due.isoformat()}: see "
                f"`ml-connector audit list --tenant {tenant.id}` and whether beat and the "
                "workers run"
            )


def _last_run_problems(status: TenantStatus, tenant_id: str) -> None:
    """A newest run that could not plan (a wrong secret: every scheduled sync fails so) or
    whose records wait on a remote that fails is a problem now, not after it is overdue."""
    run = status.last_run or {}
    if run.get("plan_errors"):
        status.problems.append(
            f"the last sync could not plan: {'; '.join(run['plan_errors'])}: fix the cause "
            f"(`ml-connector check {tenant_id}` tests both systems); the next scheduled run, "
            f"or `ml-connector sync {tenant_id}`, plans again"
        )
    if run.get("state") == "running" and run.get("retrying"):
        status.problems.append(
            f"{run['retrying']} record(s) of the running sync are retrying: "
            f"{run.get('last_retry_error') or 'a remote failed'}"
        )


def _backlog_waits(status: TenantStatus) -> None:
    """Records held by the daily budget or a 403 pause wait for hours or minutes, by design:
    the status says so (and the running run says what it waits for), so that it does not
    look stuck."""
    backlog = status.backlog
    long_holds = [hold for hold in backlog.get("waits_for", []) if hold["limit"] in LONG_HOLDS]
    if not long_holds or not backlog.get("waiting"):
        return
    reason = "; ".join(hold["detail"] for hold in long_holds)
    if status.last_run is not None and status.last_run["state"] == "running":
        status.last_run["waiting_for"] = reason
    status.problems.append(f"{backlog['waiting']} stored record(s) wait, not stuck: {reason}")


def tenant_status(
    runtime: Runtime, tenant_id: str, *, remote: bool = False, now: datetime | None = None
) -> TenantStatus:
    """Everything `ml-connector status` shows for one tenant; the database must be migrated."""
    tenant = runtime.tenant(tenant_id)
    status = TenantStatus(tenant_id)
    status.last_run = last_run(runtime, tenant_id)
    _overdue(status, runtime, tenant, now or datetime.now(UTC))
    failed = AuditLog(runtime.database).latest_failed(tenant_id)
    status.failed_waiting = len(failed)
    status.failed_keys = [f"{row.entity} {row.record_key}" for row in failed[:10]]
    status.watermarks = [
        {
            "entity": row.entity,
            "last_run_at": _iso(row.last_run_at),
            "last_status": row.last_status,
            "last_summary": row.last_summary,
        }
        for row in Watermarks(runtime.database).of_tenant(tenant_id)
    ]
    status.webhook = webhook_status(runtime, tenant_id, remote=remote)
    status.missing_credentials = missing_credentials(runtime, tenant)
    status.headroom = {
        IFS: headroom(runtime.coordination, tenant, IFS),
        PIPEDRIVE: headroom(runtime.coordination, tenant, PIPEDRIVE),
    }
    status.backlog = stored_backlog(runtime, tenant, now or datetime.now(UTC))
    _backlog_waits(status)
    if status.last_run is None:
        status.problems.append(f"never synced: run `ml-connector sync {tenant_id}`")
    else:
        _last_run_problems(status, tenant_id)
    if status.failed_waiting:
        status.problems.append(
            f"{status.failed_waiting} record(s) failed and wait for a replay: see "
            f"`ml-connector audit list --tenant {tenant_id} --status failed`, fix the cause, "
            f"then `ml-connector replay --failed --tenant {tenant_id}`"
        )
    if not status.webhook["registered"]:
        status.problems.append(
            f"no Pipedrive webhook registered: run `ml-connector webhooks ensure {tenant_id}`"
        )
    remote_view = status.webhook.get("remote") or {}
    if "error" in remote_view:
        status.problems.append(f"cannot list Pipedrive webhooks: {remote_view['error']}")
    elif remote_view and not remote_view.get("active"):
        status.problems.append(
            "Pipedrive has no active webhook for the subscription URL: run "
            f"`ml-connector webhooks ensure {tenant_id}`"
        )
    for entry in status.missing_credentials:
        status.problems.append(f"missing {entry['system']} {entry['name']}: {entry['fix']}")
    for system in (IFS, PIPEDRIVE):
        if "error" in status.headroom[system]:
            status.problems.append(status.headroom[system]["error"])
            break
    return status
