"""Pipedrive → IFS: a deal's stage change becomes an ETag-guarded change of its sales order.

Called by the job `connector.jobs.PUSH_STAGE` (one webhook event) and by reconciliation
(deals whose change no webhook delivered). Celery-free and idempotent: the same event twice
changes IFS once, an older event never overwrites a newer one, and the connector's own
changes coming back as webhooks change nothing. It raises on failure and counts nothing:
the caller observes the returned status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from connector.errors import RemoteError, TransientError, is_transient, retry_after_s
from connector.ifs.client import is_not_found
from connector.ifs.conflicts import is_conflict
from connector.jobs import PUSH_STAGE
from connector.stage_push.stage_map import (
    describe_target,
    ifs_corresponds,
    pipeline_stage_names,
    target_rule,
)
from connector.storage.audit import PIPEDRIVE_TO_IFS, RETRYING, Attempt, AuditLog
from connector.storage.idmap import ORDER, IdMap
from connector.storage.models import IdMapEntry, WebhookEvent
from connector.storage.webhook_events import (
    FINISHED,
    RECONCILE_ACTION,
    WebhookEvents,
    WebhookEventStatus,
)
from connector.sync.lifecycle import ENTITY_FOR_OBJECT, Followed, follow_gone, record_lock
from connector.tenants import TenantConfig
from connector.webhooks.events import DealState, PayloadError, WebhookEventData, parse_payload

if TYPE_CHECKING:
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 3


class OrderEditor(Protocol):
    """The part of the IFS client this module uses (connector.ifs.client.IfsClient)."""

    def get_order(self, order_no: str) -> Any: ...

    def patch_order(self, order_no: str, etag: str, changes: dict[str, Any]) -> Any: ...

    def order_action(
        self,
        order_no: str,
        etag: str,
        action: str,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any: ...


@dataclass
class PushOutcome:
    """What one push did; `status` is the event's final status (applied, ignored)."""

    status: WebhookEventStatus
    reason: str
    deal_id: int | None = None
    order_no: str | None = None
    ifs_state_before: str | None = None
    ifs_state_after: str | None = None
    change: dict[str, Any] | None = None
    writes: int = 0
    conflicts: int = 0
    audit_id: int | None = None
    # A delete (or merge) of a linked record: what the id map did about it.
    followed: Followed | None = None
    entity: str = ORDER


class _Ignore(Exception):
    """Stop processing an event: nothing to change in IFS."""

    def __init__(self, reason: str, *, newest: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # The event carries the deal's newest stage: older deliveries must not undo it.
        self.newest = newest


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

    Writes one audit row. A transient failure (IFS 429/5xx or unreachable, the deal lock
    not had in time) leaves a "retrying" row and raises TransientError carrying its id
    (`audit_id`): the caller retries, or marks the row failed. Other failures raise (e.g.
    RemoteError) and leave a failed row. Either way the event is marked failed and can be
    replayed.
    `ifs` replaces the tenant's IFS client (tests interleave concurrent edits with it).
    """
    tenant = runtime.tenant(tenant_id)
    events = WebhookEvents(runtime.database)
    row = events.get(tenant_id, webhook_event_id)
    if row is None:
        return PushOutcome(
            WebhookEventStatus.IGNORED, f"webhook event {webhook_event_id} of {tenant_id} not found"
        )
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
        replay_task=PUSH_STAGE,
        replay_args={"tenant": tenant_id, "webhook_event_id": row.id},
        replay_of=replay_of,
        attempt=attempt,
    )
    outcome = PushOutcome(WebhookEventStatus.IGNORED, "", deal_id=row.entity_id)
    transient: Exception | None = None
    try:
        with AuditLog(runtime.database).attempt(record):
            try:
                with _deal_lock(runtime, tenant_id, row.entity_id):
                    _process(runtime, tenant, webhook_event_id, ifs, outcome)
            except Exception as error:
                if not is_transient(error):
                    raise
                # The caller may retry it: a "retrying" row, which the task layer marks
                # failed once no retry is left (the contract of TransientError.audit_id).
                transient = error
                record.status, record.error = RETRYING, f"{type(error).__name__}: {error}"
            if outcome.order_no:
                record.record_key = outcome.order_no
            record.entity = outcome.entity
            record.response_summary = _summary(outcome)
            if transient is None and outcome.followed is not None:
                record.operation = outcome.followed.change.value
                record.response_summary["lifecycle"] = outcome.followed.as_dict()
            elif transient is None and outcome.writes == 0:
                record.skip("push_stage", outcome.reason)
    except Exception as error:
        outcome.status = WebhookEventStatus.FAILED
        events.finish(webhook_event_id, outcome.status, f"{type(error).__name__}: {error}")
        raise
    if transient is not None:
        outcome.status = WebhookEventStatus.FAILED
        events.finish(webhook_event_id, outcome.status, str(record.error))
        raise TransientError(
            str(transient), retry_after_s(transient), audit_id=record.audit_id
        ) from transient
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
        "status": outcome.status.value,
        "reason": outcome.reason,
        "order_no": outcome.order_no,
        "ifs_state_before": outcome.ifs_state_before,
        "ifs_state_after": outcome.ifs_state_after,
        "change": outcome.change,
        "writes": outcome.writes,
        "conflicts": outcome.conflicts,
    }


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
    events = WebhookEvents(runtime.database)
    row = events.get(tenant.id, event_row_id)
    if row is None:  # deleted meanwhile; nothing left to do
        outcome.reason = "event vanished"
        return
    if row.status in FINISHED:
        outcome.status = WebhookEventStatus(row.status)
        outcome.reason = f"already {row.status}: {row.detail or ''}"
        outcome.reason = outcome.reason.rstrip(": ")
        return
    newest: datetime | None = None
    if row.action == "delete":
        try:
            _follow_delete(runtime, tenant, row, outcome)
        except _Ignore as ignore:
            outcome.status, outcome.reason = WebhookEventStatus.IGNORED, ignore.reason
        events.finish(event_row_id, outcome.status, outcome.reason)
        return
    try:
        event, entry = _check_event(runtime, tenant, row)
        outcome.order_no = entry.ifs_key
        newest = event.timestamp
        _apply(runtime, tenant, event, entry, ifs, outcome)
    except _Ignore as ignore:
        outcome.status, outcome.reason = WebhookEventStatus.IGNORED, ignore.reason
        if not ignore.newest:
            newest = None
    events.finish(event_row_id, outcome.status, outcome.reason, deal_time=newest)


def _follow_delete(
    runtime: Runtime, tenant: TenantConfig, row: WebhookEvent, outcome: PushOutcome
) -> None:
    """A linked deal or organization was deleted (or merged away): the id map follows at
    once, by the tenant's lifecycle policy, so the next sync neither fails nor duplicates."""
    try:
        event = parse_payload(row.payload)
    except PayloadError as error:
        raise _Ignore(f"stored payload cannot be parsed: {error}") from error
    entity = ENTITY_FOR_OBJECT.get(event.entity)
    if entity is None or event.entity_id is None:
        raise _Ignore(f"deletes of {event.entity} records are not followed")
    idmap = IdMap(runtime.database)
    entry = idmap.by_pipedrive_id(tenant.id, entity, event.entity_id)
    if entry is None:
        raise _Ignore(f"{event.entity} {event.entity_id} is not linked to an IFS record")
    outcome.entity, outcome.order_no = entity, entry.ifs_key
    with runtime.coordination.lock(record_lock(tenant.id, entity, entry.ifs_key)):
        entry = idmap.get(tenant.id, entity, entry.ifs_key)
        if entry is None or entry.pipedrive_id != event.entity_id:
            raise _Ignore(f"{event.entity} {event.entity_id} was relinked meanwhile")
        if entry.tombstoned_at is not None:
            raise _Ignore(f"{event.entity} {event.entity_id} is tombstoned already")
        outcome.followed = follow_gone(
            idmap,
            tenant,
            entity,
            entry.ifs_key,
            event.entity_id,
            event.merged_to_id,
            how=f"webhook event {event.event_id}",
        )
    outcome.status = WebhookEventStatus.APPLIED
    outcome.reason = outcome.followed.reason


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
    entry = IdMap(runtime.database).by_pipedrive_id(tenant.id, ORDER, event.entity_id)
    if entry is None:
        raise _Ignore(f"deal {event.entity_id} is not linked to an IFS order")
    if entry.ifs_missing_at is not None:
        raise _Ignore(f"IFS has no order {entry.ifs_key} any more (on_ifs_missing)", newest=True)
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


def _states_handled_at(runtime: Runtime, row: WebhookEvent, moment: datetime) -> list[DealState]:
    """The deal states that other finished events of this deal stamped `moment` ended in."""
    if row.entity_id is None:
        return []
    others = WebhookEvents(runtime.database).finished_deal_events_at(
        row.tenant, row.entity_id, moment, excluding=row.id
    )
    states = []
    for other in others:
        try:
            parsed = parse_payload(other.payload)
        except PayloadError:
            continue
        if parsed.stage_changed or other.action == RECONCILE_ACTION:
            states.append(parsed.current_state)
    return states


def _apply(
    runtime: Runtime,
    tenant: TenantConfig,
    event: WebhookEventData,
    entry: IdMapEntry,
    ifs: OrderEditor | None,
    outcome: PushOutcome,
) -> None:
    """Read the order, decide, write with If-Match; re-read and re-decide on a conflict
    (412, or an error code in the tenant's `ifs.conflict_codes`)."""
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
            f"no IFS change mapped for {describe_target(stage_name, current.status)}",
            newest=True,
        )
    editor = ifs if ifs is not None else runtime.ifs_client(tenant.id)
    order_no = entry.ifs_key
    state_property = tenant.order_mapping.status
    for try_number in range(MAX_CONFLICT_RETRIES + 1):
        try:
            order = editor.get_order(order_no)
        except RemoteError as error:
            if not is_not_found(error):
                raise
            # Removed in IFS: no retry or replay could change that; on_ifs_missing follows
            # it on the next plan.
            raise _Ignore(f"IFS has no order {order_no} any more (404)", newest=True) from error
        before = order.data.get(state_property)
        if outcome.ifs_state_before is None:
            outcome.ifs_state_before = before
        if ifs_corresponds(tenant, rule, order.data):
            outcome.ifs_state_after = before
            raise _Ignore(
                f"IFS order {order_no} is already {before} "
                f"({describe_target(stage_name, current.status)})",
                newest=True,
            )
        if not order.etag:
            raise RemoteError("IFS", f"order {order_no} came without an ETag; refusing to write")
        try:
            if rule.to_ifs.action is not None:
                parameters = dict(rule.to_ifs.parameters or {})
                outcome.change = {"action": rule.to_ifs.action}
                if parameters:
                    outcome.change["parameters"] = parameters
                written = editor.order_action(
                    order_no, order.etag, rule.to_ifs.action, parameters or None
                )
            else:
                outcome.change = {"patch": dict(rule.to_ifs.patch or {})}
                written = editor.patch_order(order_no, order.etag, dict(rule.to_ifs.patch or {}))
        except RemoteError as error:
            # 412, or an error code this installation uses for "modified by another user".
            if not is_conflict(error, tenant.ifs.conflict_codes):
                raise
            outcome.conflicts += 1
            if try_number == MAX_CONFLICT_RETRIES:
                raise
            log.info("IFS order %s changed under us (%s); re-reading", order_no, error)
            continue
        outcome.writes += 1
        after = getattr(written, "data", None)
        outcome.ifs_state_after = after.get(state_property) if isinstance(after, dict) else None
        outcome.status = WebhookEventStatus.APPLIED
        outcome.reason = (
            f"{outcome.change} on IFS order {order_no} for "
            f"{describe_target(stage_name, current.status)}"
        )
        return
