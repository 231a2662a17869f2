"""Reconciliation: deal stage changes no webhook delivered, pushed as synthetic events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from connector.errors import ConnectorError, RemoteError
from connector.stage_push.push import OrderEditor, push_stage_to_ifs
from connector.storage.audit import FAILED, SUCCEEDED
from connector.storage.idmap import ORDER, IdMap
from connector.storage.watermarks import Watermarks
from connector.storage.webhook_events import RECONCILE_ACTION, WebhookEvents, WebhookEventStatus
from connector.webhooks.events import parse_time

if TYPE_CHECKING:
    from connector.runtime import Runtime

WATERMARK_ENTITY = "deal_stages"


@dataclass
class ReconcileSummary:
    """What one reconciliation run saw and did."""

    tenant: str
    since: datetime | None
    watermark: datetime | None = None
    deals_seen: int = 0
    linked: int = 0
    applied: int = 0
    ignored: int = 0
    already_seen: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def reconcile_stages(
    runtime: Runtime,
    tenant_id: str,
    since: datetime | None = None,
    *,
    ifs: OrderEditor | None = None,
    deals: Iterable[dict[str, Any]] | None = None,
    observe: Callable[[str, float], None] | None = None,
) -> ReconcileSummary:
    """Apply stage changes of deals updated since the last run that no webhook delivered.

    Each deal becomes a synthetic event keyed by deal id + update_time (stored like a
    webhook event, so a second run does nothing twice and a failure can be replayed) and
    goes through the same decision code. The watermark is kept in sync_watermarks under
    "deal_stages". `deals` replaces the Pipedrive listing (for callers that already have it).
    `observe(status, seconds)` is told of each push, as a webhook-driven push is by its task
    (the library itself counts nothing).
    """
    runtime.tenant(tenant_id)  # unknown tenant → UnknownTenantError before any I/O
    watermarks = Watermarks(runtime.database)
    if since is None:
        stored = watermarks.get(tenant_id, WATERMARK_ENTITY)
        since = parse_time(stored.watermark) if stored is not None and stored.watermark else None
    summary = ReconcileSummary(tenant=tenant_id, since=since, watermark=since)
    if deals is None:
        deals = runtime.pipedrive_client(tenant_id).iter_records("deals", updated_since=since)
    linked = IdMap(runtime.database).linked_pipedrive_ids(tenant_id, ORDER)
    events = WebhookEvents(runtime.database)
    status = SUCCEEDED
    try:
        for deal in deals:
            summary.deals_seen += 1
            updated = parse_time(deal.get("update_time"))
            if updated is not None and (summary.watermark is None or updated > summary.watermark):
                summary.watermark = updated
            deal_id = deal.get("id")
            if not isinstance(deal_id, int) or deal_id not in linked:
                continue
            summary.linked += 1
            row_id = _store_synthetic_event(events, tenant_id, deal, updated)
            if row_id is None:
                summary.already_seen += 1
                continue
            started = time.monotonic()
            try:
                outcome = push_stage_to_ifs(runtime, tenant_id, row_id, ifs=ifs)
            except (RemoteError, ConnectorError) as error:
                if observe is not None:
                    observe(WebhookEventStatus.FAILED, time.monotonic() - started)
                summary.failed += 1
                summary.errors.append(f"deal {deal_id}: {error}")
                continue
            if observe is not None:
                observe(outcome.status, time.monotonic() - started)
            if outcome.status == WebhookEventStatus.APPLIED:
                summary.applied += 1
            else:
                summary.ignored += 1
    except Exception:
        status = FAILED
        raise
    finally:
        if summary.failed:
            # Keep the old watermark so that the failed deals are listed (and retried) again.
            status, summary.watermark = FAILED, since
        watermarks.record_run(
            tenant_id,
            WATERMARK_ENTITY,
            watermark=summary.watermark.isoformat() if summary.watermark else None,
            status=status,
            summary={
                "deals_seen": summary.deals_seen,
                "linked": summary.linked,
                "applied": summary.applied,
                "ignored": summary.ignored,
                "already_seen": summary.already_seen,
                "failed": summary.failed,
            },
        )
    return summary


def _store_synthetic_event(
    events: WebhookEvents, tenant_id: str, deal: dict[str, Any], updated: datetime | None
) -> int | None:
    """The row id of the synthetic event of this deal version; None when already finished."""
    stamp = updated.strftime("%Y%m%dT%H%M%S%f") if updated else "unknown"
    event_id = f"reconcile:{deal['id']}:{stamp}"
    payload = {
        "meta": {
            "id": event_id,
            "action": "change",
            "entity": "deal",
            "entity_id": str(deal["id"]),
            "timestamp": updated.isoformat() if updated else None,
            "change_source": RECONCILE_ACTION,
        },
        "data": deal,
        "previous": None,
    }
    return events.add_reconciliation(tenant_id, event_id, deal["id"], updated, payload)
