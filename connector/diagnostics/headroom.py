"""Headroom of our own rate limiter on a tenant's IFS and Pipedrive counters, as it reports it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from connector.ifs.client import ifs_limits
from connector.pipedrive.client import SEARCH_BUCKET, burst_limits, daily_limit, rate_limit_key
from connector.ratelimit import HISTORY_S, HISTORY_SLOT_S, Limit, LimitUsage

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.tenants import TenantConfig

IFS = "ifs"
PIPEDRIVE = "pipedrive"
IN_PROCESS_NOTE = "in-process limiter (CONNECTOR_REDIS_URL unset): this process's own use only"


def tenant_limits(tenant: TenantConfig, system: str) -> tuple[str, list[Limit]]:
    """The limiter key and every limit our clients take from for `system` (ifs|pipedrive):
    IFS requests a minute; Pipedrive burst, search burst and daily tokens."""
    if system == IFS:
        return f"ifs:{tenant.id}", ifs_limits(tenant.ifs)
    limits = [*burst_limits(tenant.pipedrive, SEARCH_BUCKET), daily_limit(tenant.pipedrive)]
    return rate_limit_key(tenant.id), limits


def usage_as_dict(usage: LimitUsage) -> dict[str, Any]:
    limit = usage.limit
    return {
        "name": limit.name or "requests",
        "capacity": limit.capacity,
        "window_s": limit.window_s,
        "used": usage.used,
        "remaining": usage.remaining,
    }


def headroom(coordination: Coordination, tenant: TenantConfig, system: str) -> dict[str, Any]:
    """Our limiter's counters of the tenant for `system` as JSON, or why they cannot be read.

    An in-process limiter counts the grants of this process only: its answer carries a note.
    """
    key, limits = tenant_limits(tenant, system)
    try:
        usages = coordination.usage(key, limits)
    except RedisError as error:
        return {"error": f"Redis (CONNECTOR_REDIS_URL) unreachable: {error}"}
    shown: dict[str, Any] = {"limits": [usage_as_dict(usage) for usage in usages]}
    if not coordination.limiter.shared:
        shown["note"] = IN_PROCESS_NOTE
    return shown


def usage_history(coordination: Coordination, tenant: TenantConfig, system: str) -> dict[str, Any]:
    """What our limiter granted the tenant for `system` per slot over the last day, as JSON:
    cost units (Pipedrive tokens, IFS requests) and requests per slot, oldest first, with
    the budget they come out of; or why the history cannot be read."""
    key, limits = tenant_limits(tenant, system)
    try:
        slots = coordination.history(key)
    except RedisError as error:
        return {"error": f"Redis (CONNECTOR_REDIS_URL) unreachable: {error}"}
    # The budget a day of slots is measured against: Pipedrive's daily tokens; IFS's
    # requests a minute, as many as a slot holds.
    budget = limits[-1]
    shown: dict[str, Any] = {
        "slot_s": HISTORY_SLOT_S,
        "span_s": HISTORY_S,
        "budget": {
            "name": budget.name or "requests",
            "capacity": budget.capacity,
            "window_s": budget.window_s,
        },
        "slots": [
            {"start": slot.start, "cost": slot.cost, "requests": slot.requests} for slot in slots
        ],
        "cost": sum(slot.cost for slot in slots),
    }
    if not coordination.limiter.shared:
        shown["note"] = IN_PROCESS_NOTE
    return shown
