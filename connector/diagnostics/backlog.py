"""A tenant's stored records as `status` shows them: how many wait, how many are on their way,
the oldest, and why they wait (the dispatcher's view of the tenant's Pipedrive budget)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from connector.dispatch.dispatcher import COSTS_FIRST_LOOK, OWNER_KEY, pipedrive_budget
from connector.dispatch.pacing import Hold, RecordCosts, holds
from connector.pipedrive.client import daily_reserve
from connector.storage.audit import AuditLog
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.work_items import WorkItems

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig

# Holds that stop a tenant's records for longer than pacing does: worth a line of their own.
LONG_HOLDS = ("daily", "paused")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _waits_for(hold: Hold, tenant: TenantConfig, now: datetime) -> dict[str, Any]:
    until = now + timedelta(seconds=hold.seconds)
    shown: dict[str, Any] = {"limit": hold.limit, "seconds": round(hold.seconds, 3)}
    if hold.limit == "paused":
        shown["until"] = until.isoformat()
        shown["detail"] = (
            f"Pipedrive work paused for {hold.seconds:.0f} s more after Pipedrive's 403 block "
            "page (sent to a client that kept going after 429s); it resumes by itself"
        )
    elif hold.limit == "daily":
        shown.update(used=hold.used, capacity=hold.capacity, until=until.isoformat())
        shown["detail"] = (
            f"waiting for the daily Pipedrive budget: bulk work stops before its end, "
            f"{hold.used} of the {hold.capacity} tokens it may spend are spent in the last 24 h "
            "as counted here (never less than Pipedrive's own x-daily-requests-left), "
            f"{daily_reserve(tenant.pipedrive)} kept for stage pushes and replays; the next "
            f"record goes out at about {until.isoformat(timespec='minutes')}, by itself"
        )
    else:
        shown.update(used=hold.used, capacity=hold.capacity)
        shown["detail"] = (
            f"{hold.limit} budget: {hold.used} of {hold.capacity} requests in the rolling window; "
            f"the next record goes out in {hold.seconds:.1f} s (normal pacing)"
        )
    return shown


def stored_backlog(runtime: Runtime, tenant: TenantConfig, now: datetime) -> dict[str, Any]:
    """The tenant's stored records: waiting (due now or delayed by a retry), released and
    not finished, the oldest waiting, and what they wait for (`waits_for`: the limits that
    let no record through now, each with when it does)."""
    stored = WorkItems(runtime.database).stored(tenant.id, now=now)
    shown: dict[str, Any] = {
        "waiting": stored.waiting,
        "due": stored.due,
        "in_flight": stored.in_flight,
        "oldest_waiting_at": _iso(stored.oldest_waiting_at),
        "next_due_at": _iso(stored.next_due_at),
        "waits_for": [],
    }
    if not stored.due:
        if stored.next_due_at is not None:
            shown["waits_for"].append(
                {
                    "limit": "retry delay",
                    "until": stored.next_due_at.isoformat(),
                    "detail": "every waiting record retries later (a remote asked to wait)",
                }
            )
        return shown
    # What the dispatcher would charge each record: the tenant's recent attempts' mean.
    costs = RecordCosts()
    audit = AuditLog(runtime.database)
    spent, _ = audit.pipedrive_requests([tenant.id], max(0, audit.newest_id() - COSTS_FIRST_LOOK))
    for requests, attempts in spent.values():
        costs.learn(tenant.id, requests, attempts)
    try:
        usages, paused_s = pipedrive_budget(runtime, tenant)
    except RedisError as error:
        shown["error"] = f"Redis (CONNECTOR_REDIS_URL) unreachable: {error}"
        return shown
    shown["requests_per_record"] = round(costs.cost(tenant.id).requests, 2)
    shown["waits_for"] = [
        _waits_for(hold, tenant, now) for hold in holds(usages, paused_s, costs.cost(tenant.id))
    ]
    return shown


@dataclass(frozen=True)
class AbsentTenant:
    """A tenant with stored records that the tenants file no longer has."""

    tenant: str
    waiting: int
    ours: bool  # this deployment (queue) served it: its dispatcher drops them after the grace
    absent_since: str | None  # when this deployment's dispatcher found it missing
    dropped_at: str | None  # when that dispatcher drops its records unless it comes back

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def absent_tenants(runtime: Runtime, in_file: set[str]) -> list[AbsentTenant]:
    """Tenants not in the file (`in_file`: every id the file names, broken sections too) that
    still have records stored: kept and listed; dropped after the grace period by the
    dispatcher of the deployment that served them."""
    waiting = WorkItems(runtime.database).waiting_by_tenant()
    missing = sorted(tenant for tenant in waiting if tenant not in in_file)
    if not missing:
        return []
    notes = DatabaseTenantState(runtime.database).with_key(OWNER_KEY)
    grace = timedelta(days=runtime.settings.absent_tenant_backlog_days)
    found = []
    for tenant in missing:
        note = notes.get(tenant, {})
        ours = note.get("queue") == runtime.settings.queue
        since = note.get("absent_since") if ours else None
        dropped = (datetime.fromisoformat(since) + grace).isoformat() if since else None
        found.append(AbsentTenant(tenant, waiting[tenant], ours, since, dropped))
    return found
