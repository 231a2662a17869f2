"""Pipedrive → IFS: a deal's stage change becomes an ETag-guarded change of its sales order.

Called by the Celery task `ml_connector.push_stage_to_ifs` (one webhook event) and by the
scheduled reconciliation (deals whose change no webhook delivered). Celery-free and
idempotent: the same event twice changes IFS once, an older event never overwrites a newer
one, and the connector's own changes coming back as webhooks change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from connector.errors import ConnectorError, PreconditionFailed, RemoteError
from connector.pipedrive.provisioning import PipelineIds
from connector.storage.audit import PIPEDRIVE_TO_IFS, Attempt, AuditLog
from connector.storage.idmap import ORDER
from connector.storage.models import IdMapEntry, SyncWatermark, WebhookEvent, utcnow
from connector.storage.tenant_state import DatabaseTenantState
from connector.tenants import StageRule, TenantConfig
from connector.webhooks.events import PayloadError, WebhookEventData, parse_payload, parse_time

if TYPE_CHECKING:
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

PUSH_TASK = "ml_connector.push_stage_to_ifs"
RECONCILE_ACTION = "reconcile"  # WebhookEvent.action of a synthetic event from reconciliation
WATERMARK_ENTITY = "deal_stages"
PIPELINE_STATE_KEY = "pipeline"
MAX_CONFLICT_RETRIES = 3

# WebhookEvent.status values.
RECEIVED = "received"  # persisted, not yet handed to the broker
ENQUEUED = "enqueued"  # handed to the broker
APPLIED = "applied"  # IFS was changed for this event
IGNORED = "ignored"  # nothing to do (echo, stale, unmapped, not linked…); `detail` says why
FAILED = "failed"  # IFS refused or could not be reached; a retry or replay may succeed
FINISHED = (APPLIED, IGNORED)


class IfsOrderRecord(Protocol):
    """What the IFS client returns for one order: key, ETag and properties."""

    key: str
    etag: str
    data: dict[str, Any]


class OrderEditor(Protocol):
    """The part of the IFS client this module uses (connector.ifs.client.IfsClient)."""

    def get_order(self, order_no: str) -> Any: ...

    def patch_order(self, order_no: str, etag: str, changes: dict[str, Any]) -> Any: ...

    def order_action(self, order_no: str, etag: str, action: str) -> Any: ...


@dataclass
class PushOutcome:
    """What one push did; `status` is the event's final status (applied, ignored)."""

    status: str
    reason: str
    deal_id: int | None = None
    order_no: str | None = None
    ifs_state_before: str | None = None
    ifs_state_after: str | None = None
    change: dict[str, Any] | None = None
    writes: int = 0
    conflicts: int = 0
    audit_id: int | None = None


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


class _Ignore(Exception):
    """Stop processing an event: nothing to change in IFS."""

    def __init__(self, reason: str, *, newest: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # The event carries the deal's newest stage: older deliveries must not undo it.
        self.newest = newest


# -- stage map ----------------------------------------------------------------------------


def pipeline_stage_names(runtime: Runtime, tenant_id: str) -> dict[int, str]:
    """Stage id → stage name of the tenant pipeline, as provisioning cached it."""
    cached = DatabaseTenantState(runtime.database).get(tenant_id, PIPELINE_STATE_KEY)
    if cached is None:
        return {}
    return {stage_id: name for name, stage_id in PipelineIds.from_json(cached).stage_ids.items()}


def target_rule(
    tenant: TenantConfig, stage_name: str | None, status: str | None
) -> StageRule | None:
    """The stage-map rule that says how IFS must change for a deal in this stage/status.

    Won and lost deals follow the rule with that deal status (the one for their stage
    first); open deals the open rule of their stage. Only rules with `to_ifs` count.
    """
    rules = [rule for rule in tenant.stage_map if rule.to_ifs is not None]
    if status in ("won", "lost"):
        candidates = [rule for rule in rules if rule.deal_status == status]
        matching = [rule for rule in candidates if rule.stage == stage_name]
        return next(iter(matching or candidates), None)
    if status in (None, "open") and stage_name is not None:
        return next((r for r in rules if r.deal_status == "open" and r.stage == stage_name), None)
    return None


def ifs_corresponds(tenant: TenantConfig, rule: StageRule, order: dict[str, Any]) -> bool:
    """True when the IFS order already stands where `rule` would take it (nothing to write)."""
    current = tenant.rule_for_state(str(order.get(tenant.order_mapping.status)))
    if current is not None and (current.stage, current.deal_status) == (
        rule.stage,
        rule.deal_status,
    ):
        return True
    patch = rule.to_ifs.patch if rule.to_ifs is not None else None
    if not patch:
        return False
    return all(order.get(name) == value for name, value in patch.items())


def _describe_target(stage_name: str | None, status: str | None) -> str:
    if status in ("won", "lost"):
        return f"{status} deal" + (f" in stage {stage_name!r}" if stage_name else "")
    return f"stage {stage_name!r}"


# -- the push -----------------------------------------------------------------------------


def push_stage_to_ifs(
    runtime: Runtime,
    tenant_id: str,
    webhook_event_id: int,
    *,
    ifs: OrderEditor | None = None,
    attempt: int = 1,
    replay_of: int | None = None,
) -> PushOutcome:
    """Apply one stored webhook event (or synthetic reconciliation event) to IFS.

    Writes one audit row. Raises RemoteError when IFS fails (its `retryable` tells the
    caller whether to retry); the event is then marked failed and can be replayed.
    `ifs` replaces the tenant's IFS client (tests interleave concurrent edits with it).
    """
    tenant = runtime.tenant(tenant_id)
    row = _load_event(runtime, tenant_id, webhook_event_id)
    if row is None:
        return PushOutcome(IGNORED, f"webhook event {webhook_event_id} of {tenant_id} not found")
    record = Attempt(
        tenant=tenant_id,
        direction=PIPEDRIVE_TO_IFS,
        entity=ORDER,
        record_key=f"deal:{row.entity_id}",
        operation="push_stage",
        request_summary={
            "webhook_event_id": row.id,
            "event_id": row.event_id,
            "deal_id": row.entity_id,
            "action": row.action,
            "event_time": row.event_time.isoformat() if row.event_time else None,
        },
        replay_task=PUSH_TASK,
        replay_args={"tenant": tenant_id, "webhook_event_id": row.id},
        replay_of=replay_of,
        attempt=attempt,
    )
    outcome = PushOutcome(IGNORED, "", deal_id=row.entity_id)
    try:
        with AuditLog(runtime.database).attempt(record):
            with _deal_lock(runtime, tenant_id, row.entity_id):
                _process(runtime, tenant, webhook_event_id, ifs, outcome)
            if outcome.order_no:
                record.record_key = outcome.order_no
            record.response_summary = _summary(outcome)
            if outcome.writes == 0:
                record.skip("push_stage", outcome.reason)
    except Exception as error:
        outcome.status = FAILED
        _finish_event(runtime, webhook_event_id, FAILED, f"{type(error).__name__}: {error}")
        raise
    outcome.audit_id = record.audit_id
    log.info(
        "stage push %s/%s deal %s: %s (%s)",
        tenant_id,
        webhook_event_id,
        row.entity_id,
        outcome.status,
        outcome.reason,
    )
    return outcome


def _summary(outcome: PushOutcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "reason": outcome.reason,
        "order_no": outcome.order_no,
        "ifs_state_before": outcome.ifs_state_before,
        "ifs_state_after": outcome.ifs_state_after,
        "change": outcome.change,
        "writes": outcome.writes,
        "conflicts": outcome.conflicts,
    }


def _load_event(runtime: Runtime, tenant_id: str, event_row_id: int) -> WebhookEvent | None:
    with runtime.database.session() as session:
        row = session.get(WebhookEvent, event_row_id)
        return row if row is not None and row.tenant == tenant_id else None


@contextmanager
def _deal_lock(runtime: Runtime, tenant_id: str, deal_id: int | None) -> Iterator[None]:
    # Two workers handling two events of one deal would otherwise race on ordering.
    if deal_id is None:
        yield
        return
    with runtime.coordination.lock(f"stage-push:{tenant_id}:{deal_id}", ttl_s=120, wait_s=60):
        yield


def _process(
    runtime: Runtime,
    tenant: TenantConfig,
    event_row_id: int,
    ifs: OrderEditor | None,
    outcome: PushOutcome,
) -> None:
    """Decide and act under the deal lock; fills `outcome` and records the event's status."""
    row = _load_event(runtime, tenant.id, event_row_id)
    if row is None:  # deleted meanwhile; nothing left to do
        outcome.reason = "event vanished"
        return
    if row.status in FINISHED:
        outcome.status, outcome.reason = row.status, f"already {row.status}: {row.detail or ''}"
        outcome.reason = outcome.reason.rstrip(": ")
        return
    newest: datetime | None = None
    try:
        event, entry = _check_event(runtime, tenant, row)
        outcome.order_no = entry.ifs_key
        newest = event.timestamp
        _apply(runtime, tenant, event, entry, ifs, outcome)
    except _Ignore as ignore:
        outcome.status, outcome.reason = IGNORED, ignore.reason
        if not ignore.newest:
            newest = None
    _finish_event(runtime, event_row_id, outcome.status, outcome.reason, deal_time=newest)


def _check_event(
    runtime: Runtime, tenant: TenantConfig, row: WebhookEvent
) -> tuple[WebhookEventData, IdMapEntry]:
    """The parsed event and its deal's id-map entry, or _Ignore saying why nothing happens."""
    try:
        event = parse_payload(row.payload)
    except PayloadError as error:
        raise _Ignore(f"stored payload cannot be parsed: {error}") from error
    synthetic = row.action == RECONCILE_ACTION
    if not event.is_deal or event.entity_id is None:
        raise _Ignore(f"{event.entity} events do not move order states")
    entry = _id_map_entry(runtime, tenant.id, event.entity_id)
    if entry is None:
        raise _Ignore(f"deal {event.entity_id} is not linked to an IFS order")
    if not synthetic and event.action != "change":
        raise _Ignore(f"a {event.action} event moves no order state")
    if not synthetic and not event.stage_changed:
        raise _Ignore("neither stage nor status changed")
    _check_order(runtime, tenant, row, event, entry)
    integration_user = tenant.pipedrive.integration_user_id
    if (
        not synthetic
        and event.change_source == "api"
        and integration_user is not None
        and event.user_id == integration_user
    ):
        raise _Ignore("echo of the connector's own change", newest=True)
    if synthetic:
        pushed = entry.last_payload or {}
        current = event.current_state
        if (
            "stage_id" in pushed
            and pushed.get("stage_id") == current.stage_id
            and pushed.get("status", current.status) == current.status
        ):
            raise _Ignore("the deal stands where the connector last put it")
    return event, entry


def _check_order(
    runtime: Runtime,
    tenant: TenantConfig,
    row: WebhookEvent,
    event: WebhookEventData,
    entry: IdMapEntry,
) -> None:
    """_Ignore when a newer event of the same deal was already handled."""
    moment, last = event.timestamp, entry.last_event_at
    if moment is None or last is None:
        return
    if last.tzinfo is None:  # SQLite drops the zone; stored values are UTC
        last = last.replace(tzinfo=moment.tzinfo)
    if moment < last:
        raise _Ignore(f"older than the newest handled event of this deal ({last.isoformat()})")
    if moment == last and row.action != RECONCILE_ACTION:
        # Timestamps have second resolution: within one second, an event continues the
        # chain only if it starts where an already handled event of that second ended.
        previous = event.previous_state
        if previous is None or previous not in _states_handled_at(runtime, row, moment):
            raise _Ignore(f"not newer than the newest handled event ({last.isoformat()})")


def _states_handled_at(runtime: Runtime, row: WebhookEvent, moment: datetime) -> list[Any]:
    with runtime.database.session() as session:
        others = session.scalars(
            select(WebhookEvent).where(
                WebhookEvent.tenant == row.tenant,
                WebhookEvent.entity == "deal",
                WebhookEvent.entity_id == row.entity_id,
                WebhookEvent.event_time == moment,
                WebhookEvent.status.in_(FINISHED),
                WebhookEvent.id != row.id,
            )
        ).all()
    states = []
    for other in others:
        try:
            parsed = parse_payload(other.payload)
        except PayloadError:
            continue
        if parsed.stage_changed or other.action == RECONCILE_ACTION:
            states.append(parsed.current_state)
    return states


def _id_map_entry(runtime: Runtime, tenant_id: str, deal_id: int) -> IdMapEntry | None:
    with runtime.database.session() as session:
        return session.scalar(
            select(IdMapEntry)
            .where(
                IdMapEntry.tenant == tenant_id,
                IdMapEntry.entity == ORDER,
                IdMapEntry.pipedrive_id == deal_id,
            )
            .order_by(IdMapEntry.id)
            .limit(1)
        )


def _apply(
    runtime: Runtime,
    tenant: TenantConfig,
    event: WebhookEventData,
    entry: IdMapEntry,
    ifs: OrderEditor | None,
    outcome: PushOutcome,
) -> None:
    """Read the order, decide, write with If-Match; re-read and re-decide on 412."""
    current = event.current_state
    stage_name = None
    if current.stage_id is not None:
        stage_name = pipeline_stage_names(runtime, tenant.id).get(current.stage_id)
        if stage_name is None and current.status in (None, "open"):
            raise _Ignore(
                f"stage id {current.stage_id} is not a stage of the tenant pipeline "
                "(run provisioning?)",
                newest=True,
            )
    rule = target_rule(tenant, stage_name, current.status)
    if rule is None or rule.to_ifs is None:
        raise _Ignore(
            f"no IFS change mapped for {_describe_target(stage_name, current.status)}",
            newest=True,
        )
    editor = ifs if ifs is not None else runtime.ifs_client(tenant.id)
    order_no = entry.ifs_key
    state_property = tenant.order_mapping.status
    for try_number in range(MAX_CONFLICT_RETRIES + 1):
        order = editor.get_order(order_no)
        before = order.data.get(state_property)
        if outcome.ifs_state_before is None:
            outcome.ifs_state_before = before
        if ifs_corresponds(tenant, rule, order.data):
            outcome.ifs_state_after = before
            raise _Ignore(
                f"IFS order {order_no} is already {before} "
                f"({_describe_target(stage_name, current.status)})",
                newest=True,
            )
        if not order.etag:
            raise RemoteError("IFS", f"order {order_no} came without an ETag; refusing to write")
        try:
            if rule.to_ifs.action is not None:
                outcome.change = {"action": rule.to_ifs.action}
                written = editor.order_action(order_no, order.etag, rule.to_ifs.action)
            else:
                outcome.change = {"patch": dict(rule.to_ifs.patch or {})}
                written = editor.patch_order(order_no, order.etag, dict(rule.to_ifs.patch or {}))
        except PreconditionFailed:
            outcome.conflicts += 1
            if try_number == MAX_CONFLICT_RETRIES:
                raise
            log.info("IFS order %s changed under us (412); re-reading", order_no)
            continue
        outcome.writes += 1
        after = getattr(written, "data", None)
        outcome.ifs_state_after = after.get(state_property) if isinstance(after, dict) else None
        outcome.status = APPLIED
        outcome.reason = (
            f"{outcome.change} on IFS order {order_no} for "
            f"{_describe_target(stage_name, current.status)}"
        )
        return


def _finish_event(
    runtime: Runtime,
    event_row_id: int,
    status: str,
    detail: str,
    *,
    deal_time: datetime | None = None,
) -> None:
    """Record the event's outcome and, for a newest-state event, the deal's event time."""
    with runtime.database.session() as session:
        row = session.get(WebhookEvent, event_row_id)
        if row is None:
            return
        row.status, row.detail, row.processed_at = status, detail[:2000], utcnow()
        if deal_time is not None and row.entity_id is not None:
            # Monotonic: a concurrent newer time is never replaced by an older one.
            session.execute(
                update(IdMapEntry)
                .where(
                    IdMapEntry.tenant == row.tenant,
                    IdMapEntry.entity == ORDER,
                    IdMapEntry.pipedrive_id == row.entity_id,
                    or_(IdMapEntry.last_event_at.is_(None), IdMapEntry.last_event_at < deal_time),
                )
                .values(last_event_at=deal_time)
            )


# -- reconciliation -----------------------------------------------------------------------


def reconcile_stages(
    runtime: Runtime,
    tenant_id: str,
    since: datetime | None = None,
    *,
    ifs: OrderEditor | None = None,
    deals: Iterable[dict[str, Any]] | None = None,
) -> ReconcileSummary:
    """Apply stage changes of deals updated since the last run that no webhook delivered.

    Each deal becomes a synthetic event keyed by deal id + update_time (stored like a
    webhook event, so a second run does nothing twice and a failure can be replayed) and
    goes through the same decision code. The watermark is kept in sync_watermarks under
    "deal_stages". `deals` replaces the Pipedrive listing (for callers that already have it).
    """
    runtime.tenant(tenant_id)  # unknown tenant → UnknownTenantError before any I/O
    if since is None:
        since = _read_watermark(runtime, tenant_id)
    summary = ReconcileSummary(tenant=tenant_id, since=since, watermark=since)
    if deals is None:
        deals = runtime.pipedrive_client(tenant_id).iter_deals(updated_since=since)
    linked = _linked_deal_ids(runtime, tenant_id)
    status = "succeeded"
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
            row_id = _store_synthetic_event(runtime, tenant_id, deal, updated)
            if row_id is None:
                summary.already_seen += 1
                continue
            try:
                outcome = push_stage_to_ifs(runtime, tenant_id, row_id, ifs=ifs)
            except (RemoteError, ConnectorError) as error:
                summary.failed += 1
                summary.errors.append(f"deal {deal_id}: {error}")
                continue
            if outcome.status == APPLIED:
                summary.applied += 1
            else:
                summary.ignored += 1
    except Exception:
        status = "failed"
        raise
    finally:
        if summary.failed:
            # Keep the old watermark so that the failed deals are listed (and retried) again.
            status, summary.watermark = "failed", since
        _write_watermark(runtime, tenant_id, summary, status)
    return summary


def _linked_deal_ids(runtime: Runtime, tenant_id: str) -> set[int]:
    with runtime.database.session() as session:
        ids = session.scalars(
            select(IdMapEntry.pipedrive_id).where(
                IdMapEntry.tenant == tenant_id,
                IdMapEntry.entity == ORDER,
                IdMapEntry.pipedrive_id.is_not(None),
            )
        )
        return {int(deal_id) for deal_id in ids if deal_id is not None}


def _store_synthetic_event(
    runtime: Runtime, tenant_id: str, deal: dict[str, Any], updated: datetime | None
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
    with runtime.database.session() as session:
        existing = session.scalar(
            select(WebhookEvent).where(
                WebhookEvent.tenant == tenant_id, WebhookEvent.event_id == event_id
            )
        )
        if existing is not None:
            # A failed earlier try is retried; a finished one is not done twice.
            return None if existing.status in FINISHED else existing.id
    try:
        with runtime.database.session() as session:
            row = WebhookEvent(
                tenant=tenant_id,
                event_id=event_id,
                entity="deal",
                entity_id=deal["id"],
                action=RECONCILE_ACTION,
                change_source=RECONCILE_ACTION,
                event_time=updated,
                payload=payload,
                status=ENQUEUED,
            )
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:
        return None


def _read_watermark(runtime: Runtime, tenant_id: str) -> datetime | None:
    with runtime.database.session() as session:
        row = session.get(SyncWatermark, (tenant_id, WATERMARK_ENTITY))
        return parse_time(row.watermark) if row is not None and row.watermark else None


def _write_watermark(
    runtime: Runtime, tenant_id: str, summary: ReconcileSummary, status: str
) -> None:
    values = {
        "watermark": summary.watermark.isoformat() if summary.watermark else None,
        "last_run_at": utcnow(),
        "last_status": status,
        "last_summary": {
            "deals_seen": summary.deals_seen,
            "linked": summary.linked,
            "applied": summary.applied,
            "ignored": summary.ignored,
            "already_seen": summary.already_seen,
            "failed": summary.failed,
        },
    }
    for _ in range(2):  # a concurrent first insert turns into an update
        try:
            with runtime.database.session() as session:
                key = (tenant_id, WATERMARK_ENTITY)
                row = session.get(SyncWatermark, key, with_for_update=True)
                if row is None:
                    session.add(SyncWatermark(tenant=tenant_id, entity=WATERMARK_ENTITY, **values))
                else:
                    for name, value in values.items():
                        setattr(row, name, value)
            return
        except IntegrityError:
            continue
