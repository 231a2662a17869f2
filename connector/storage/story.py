"""One record's story, read from the id map, the audit log and the webhook events: every sync
attempt and stage push, every webhook event about any Pipedrive record it was ever linked to,
and what its life did to the link (deletes, merges, relinks, tombstones, IFS removals).

The one home of that query: `ml-connector audit history` and the console's record page both
tell the story from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.storage.audit import IFS_TO_PIPEDRIVE, AuditLog
from connector.storage.database import Database
from connector.storage.idmap import ORDER, IdMap
from connector.storage.models import AuditRecord, IdMapEntry, WebhookEvent, aware
from connector.storage.webhook_events import RECONCILE_ACTION, WebhookEvents

# Pipedrive's name of the record standing for each IFS entity (webhook meta.entity).
PIPEDRIVE_OBJECT = {"customer": "organization", ORDER: "deal"}
# Audit operations that changed the record's link rather than its content.
LIFE_OPERATIONS = ("relinked", "unlinked", "tombstoned", "relink", "ifs_missing", "close")


@dataclass(frozen=True)
class Chapter:
    """One line of the story, in time order: an audit row or a webhook event."""

    at: datetime
    source: str  # "IFS → Pipedrive", "Pipedrive → IFS", "webhook" or "reconciliation"
    what: str  # the audit operation, or "webhook <action>"
    status: str
    detail: str
    audit_id: int | None = None
    event_id: str | None = None
    pipedrive_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "source": self.source,
            "what": self.what,
            "status": self.status,
            "detail": self.detail,
            "audit_id": self.audit_id,
            "event_id": self.event_id,
            "pipedrive_id": self.pipedrive_id,
        }


@dataclass
class RecordStory:
    tenant: str
    entity: str
    key: str
    link: IdMapEntry | None
    pipedrive_ids: list[int]  # every Pipedrive record it was linked to, in order of appearance
    attempts: list[AuditRecord]  # oldest first
    events: list[WebhookEvent]  # oldest first

    @property
    def known(self) -> bool:
        """Whether the connector ever had anything to do with this record."""
        return self.link is not None or bool(self.attempts)

    @property
    def pipedrive_object(self) -> str:
        return PIPEDRIVE_OBJECT.get(self.entity, self.entity)

    @property
    def pipedrive_id(self) -> int | None:
        return self.link.pipedrive_id if self.link is not None else None

    @property
    def state(self) -> str:
        """Where the record stands now, in one sentence."""
        link, noun = self.link, self.pipedrive_object
        if link is None:
            return "not in the id map: never linked to a Pipedrive record"
        if link.tombstoned_at is not None:
            return f"tombstoned since {_iso(link.tombstoned_at)}: {link.tombstone_reason}"
        if link.ifs_missing_at is not None:
            linked = f"{noun} {link.pipedrive_id}" if link.pipedrive_id else "nothing"
            return f"missing from IFS since {_iso(link.ifs_missing_at)}; linked to {linked}"
        if link.pipedrive_id is None:
            return f"not linked: the next sync finds or creates its {noun}"
        return f"linked to {noun} {link.pipedrive_id}"

    def chapters(self) -> list[Chapter]:
        """Audit rows and webhook events merged in time order."""
        chapters = [_attempt_chapter(row) for row in self.attempts]
        chapters += [_event_chapter(event) for event in self.events]
        return sorted(chapters, key=lambda chapter: aware(chapter.at))

    def as_dict(self) -> dict[str, Any]:
        link = self.link
        return {
            "tenant": self.tenant,
            "entity": self.entity,
            "key": self.key,
            "state": self.state,
            "pipedrive_object": self.pipedrive_object,
            "pipedrive_id": self.pipedrive_id,
            "pipedrive_ids": self.pipedrive_ids,
            "tombstoned_at": _iso(link.tombstoned_at) if link else None,
            "tombstone_reason": link.tombstone_reason if link else None,
            "ifs_missing_at": _iso(link.ifs_missing_at) if link else None,
            "chapters": [chapter.as_dict() for chapter in self.chapters()],
        }


def record_story(database: Database, tenant: str, entity: str, key: str) -> RecordStory:
    """The story of the tenant's `entity` record with IFS key `key` (empty when unknown:
    see `RecordStory.known`)."""
    link = IdMap(database).get(tenant, entity, key)
    audit = AuditLog(database)
    ids: list[int] = []
    for row in audit.story(tenant, entity, [key]):
        ids += [found for found in _pipedrive_ids(row) if found not in ids]
    if link is not None and link.pipedrive_id is not None and link.pipedrive_id not in ids:
        ids.append(link.pipedrive_id)
    keys = [key]
    if entity == ORDER:
        # A stage push that failed before it found the order is keyed by its deal.
        keys += [f"deal:{deal_id}" for deal_id in ids]
    attempts = audit.story(tenant, entity, keys)
    events = WebhookEvents(database).of_records(tenant, PIPEDRIVE_OBJECT[entity], ids)
    return RecordStory(tenant, entity, key, link, ids, attempts, events)


def _pipedrive_ids(row: AuditRecord) -> list[int]:
    """The Pipedrive ids one audit row names: written to, deleted, merged into, relinked."""
    found: list[Any] = []
    for summary in (row.request_summary or {}, row.response_summary or {}):
        found += [summary.get("pipedrive_id"), summary.get("deal_id")]
        found += [summary.get("from_pipedrive_id"), summary.get("to_pipedrive_id")]
        life = summary.get("lifecycle")
        if isinstance(life, dict):
            found += [life.get("gone_id"), life.get("survivor_id")]
    return [value for value in found if isinstance(value, int) and value > 0]


def _attempt_chapter(row: AuditRecord) -> Chapter:
    request, response = row.request_summary or {}, row.response_summary or {}
    details: list[str] = []
    if request.get("changes"):
        details.append("changed: " + ", ".join(request["changes"]))
    if request.get("archived"):
        details.append(f"the {PIPEDRIVE_OBJECT.get(row.entity, row.entity)} is archived")
    life = request.get("lifecycle") or response.get("lifecycle")
    if isinstance(life, dict) and life.get("reason"):
        details.append(str(life["reason"]))
    if row.operation == "relink":
        details.append(
            f"{request.get('from_pipedrive_id')} → {request.get('to_pipedrive_id')} "
            f"({response.get('reason')})"
        )
    if response.get("change"):
        details.append(f"IFS change {response['change']}")
    if response.get("ifs_state_before") or response.get("ifs_state_after"):
        details.append(
            f"IFS state {response.get('ifs_state_before')} → {response.get('ifs_state_after')}"
        )
    if response.get("conflicts"):
        details.append(f"{response['conflicts']} × 412 re-read")
    if row.error:
        details.append(row.error)
    elif response.get("reason") and row.operation != "relink":
        details.append(str(response["reason"]))
    if (row.occurrences or 1) > 1:
        details.append(f"{row.occurrences} identical attempts until {_iso(row.finished_at)}")
    pipedrive_id = response.get("pipedrive_id") or request.get("pipedrive_id")
    if isinstance(pipedrive_id, int) and row.operation in ("create", "update", "close"):
        details.append(f"Pipedrive id {pipedrive_id}")
    return Chapter(
        at=row.started_at,
        source="IFS → Pipedrive" if row.direction == IFS_TO_PIPEDRIVE else "Pipedrive → IFS",
        what=row.operation,
        status=row.status,
        detail="; ".join(dict.fromkeys(details)),  # a reason given twice is told once
        audit_id=row.id,
        pipedrive_id=pipedrive_id if isinstance(pipedrive_id, int) else None,
    )


def _event_chapter(event: WebhookEvent) -> Chapter:
    payload = event.payload or {}
    meta, data = payload.get("meta") or {}, payload.get("data") or {}
    previous = payload.get("previous") or {}
    details: list[str] = []
    synthetic = event.action == RECONCILE_ACTION
    merged_to = meta.get("merged_to_id")
    if event.action == "delete":
        details.append(f"merged into {merged_to}" if merged_to else "deleted in Pipedrive")
    if isinstance(data, dict) and data.get("is_archived") and "is_archived" in previous:
        details.append("archived in Pipedrive")
    elif isinstance(data, dict) and data.get("is_archived"):
        details.append("archived")
    if event.change_source and not synthetic:
        details.append(f"source {event.change_source}")
    if event.detail:
        details.append(event.detail)
    return Chapter(
        at=event.received_at,
        source="reconciliation" if synthetic else "webhook",
        what="deal listed" if synthetic else f"webhook {event.action}",
        status=event.status,
        detail="; ".join(details),
        event_id=event.event_id,
        pipedrive_id=event.entity_id,
    )


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment is not None else None
