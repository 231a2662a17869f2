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
    # Linked deals listed as deleted (their delete webhook never came), followed in the id map.
    deleted: int = 0
    errors: list[str] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)


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
    deleted: Iterable[dict[str, Any]] = ()
    if deals is None:
        client = runtime.pipedrive_client(tenant_id)
        deals = client.iter_records("deals", updated_since=since)
        deleted = client.iter_records("deals", updated_since=since, status="deleted")
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
        _follow_deleted(runtime, tenant_id, deleted, summary)
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
                "deleted": summary.deleted,
            },
        )
    return summary


def _follow_deleted(
    runtime: Runtime,
    tenant_id: str,
    deleted: Iterable[dict[str, Any]],
    summary: ReconcileSummary,
) -> None:
    """Linked deals deleted (or merged away) in Pipedrive whose webhook never came: the id map
    follows them by the lifecycle policy now, as the webhook would have, instead of at the
    next write's 404; a deleted deal is never pushed to IFS."""
    idmap = IdMap(runtime.database)
    for deal in deleted:
        deal_id = deal.get("id")
        if not isinstance(deal_id, int):
            continue
        updated = parse_time(deal.get("update_time"))
        if updated is not None and (summary.watermark is None or updated > summary.watermark):
            summary.watermark = updated
        entry = idmap.by_pipedrive_id(tenant_id, ORDER, deal_id)
        if entry is None or entry.tombstoned_at is not None:
            continue
        followed = runtime.tenant_sync(tenant_id).follow_deleted(
            ORDER, entry.ifs_key, deal_id, how="listed as deleted by reconciliation"
        )
        if followed is not None:
            summary.deleted += 1
            summary.followed.append(f"order {entry.ifs_key}: {followed.reason}")


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
