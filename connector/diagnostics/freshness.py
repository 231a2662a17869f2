"""How fresh each tenant's sync is: last successful sync per entity, overdue, failures waiting.

`status` shows a tenant whose sync missed a scheduled run as `! overdue`; the receiver's
/metrics scrape exports the same facts (mlc_last_successful_sync_timestamp_seconds,
mlc_failed_records_waiting), read from the database at scrape time like the queue depth.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from connector import metrics
from connector.cron import CronError, next_run
from connector.storage.audit import AuditLog
from connector.storage.runs import last_completed_plans

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig

log = logging.getLogger(__name__)

# A run starts on the minute and its plan takes a while to read IFS: only a sync later than
# its scheduled time by more than this is overdue.
DEFAULT_SLACK = timedelta(minutes=5)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def last_successful_syncs(runtime: Runtime, tenant_id: str) -> dict[str, datetime]:
    """Entity → when its newest plan that read IFS to the end finished."""
    found = last_completed_plans(runtime.database, tenant_id)
    return {entity: _aware(moment) for (_, entity), moment in found.items()}


def last_successful_syncs_by_tenant(runtime: Runtime) -> dict[str, dict[str, datetime]]:
    """Tenant → entity → when its newest plan that read IFS to the end finished (one query
    for every tenant, as the console's Tenants page needs them)."""
    found: dict[str, dict[str, datetime]] = {}
    for (tenant_id, entity), moment in last_completed_plans(runtime.database).items():
        found.setdefault(tenant_id, {})[entity] = _aware(moment)
    return found


def overdue_by(
    tenant: TenantConfig,
    last_success: datetime,
    now: datetime | None = None,
    slack: timedelta = DEFAULT_SLACK,
) -> datetime | None:
    """The scheduled run after `last_success` that has not succeeded although it is more than
    `slack` late, or None when the sync is on time."""
    now = _aware(now or datetime.now(UTC))
    try:
        due = next_run(tenant.schedule, _aware(last_success))
    except CronError:
        return None  # the tenants file check reports an unusable schedule
    return due if now > due + slack else None


def measure_sync_metrics(runtime: Runtime, tenant_ids: list[str]) -> None:
    """Set the freshness gauges of `tenant_ids` from the database (at each /metrics scrape)."""
    for (tenant_id, entity), moment in last_completed_plans(runtime.database).items():
        if tenant_id in tenant_ids:
            metrics.set_last_successful_sync(tenant_id, entity, _aware(moment).timestamp())
    waiting = AuditLog(runtime.database).failed_waiting()
    for tenant_id in tenant_ids:
        metrics.set_failed_waiting(tenant_id, waiting.get(tenant_id, 0))
