"""Pipedrive webhook payloads (v2 and v1) parsed into one typed event."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# v1 names its actions differently; the connector speaks v2's.
V1_ACTIONS = {"added": "create", "updated": "change", "deleted": "delete", "merged": "merge"}
KNOWN_ACTIONS = {"create", "change", "delete", "merge"}
# Keys that differ between delivery attempts of one event; the fallback id ignores them.
_ATTEMPT_KEYS = {"retry", "attempt", "attempt_no", "next_attempt_ts"}


class PayloadError(ValueError):
    """The body is not a Pipedrive webhook payload (not JSON, or not the expected shape)."""


@dataclass(frozen=True)
class DealState:
    """The stage and status of a deal at one moment (either may be unknown)."""

    stage_id: int | None
    status: str | None


@dataclass(frozen=True)
class WebhookEventData:
    """One webhook delivery, whatever its version: who changed what, when, from what to what."""

    event_id: str
    version: int
    action: str
    entity: str
    entity_id: int | None
    change_source: str | None
    user_id: int | None
    timestamp: datetime | None
    data: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None
    # v2 reports a merge as a delete of the merged record naming the survivor here.
    merged_to_id: int | None = None

    @property
    def is_deal(self) -> bool:
        return self.entity == "deal"

    @property
    def current_state(self) -> DealState:
        return DealState(_int_or_none(self.data.get("stage_id")), _str_or_none(self.data, "status"))

    @property
    def previous_state(self) -> DealState | None:
        """The stage/status before the change; None when the payload has no `previous`."""
        if not self.previous:
            return None
        current = self.current_state
        # v2 `previous` lists changed fields only; v1 carries the whole previous object.
        stage = self.previous.get("stage_id", current.stage_id)
        status = self.previous.get("status", current.status)
        return DealState(_int_or_none(stage), status if isinstance(status, str) else None)

    @property
    def stage_changed(self) -> bool:
        """True when the stage or the status differs from before the event."""
        previous = self.previous_state
        return previous is not None and previous != self.current_state


def parse_body(body: bytes) -> tuple[dict[str, Any], WebhookEventData]:
    """The decoded payload (as it is stored) and its event, from a raw webhook body;
    PayloadError (its message says what is wrong) unless the body is a webhook payload
    that can be stored: see connector.webhooks.shape."""
    # Imported here: the shape check reads this module's action names.
    from connector.webhooks.shape import check_shape, decode

    payload = decode(body)
    check_shape(payload, body)
    event = parse_payload(payload)  # refuses anything but an object, so payload is a dict
    return payload, event


def parse_payload(payload: Any) -> WebhookEventData:
    """Parse a decoded webhook payload of version 1 or 2."""
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        raise PayloadError("expected a JSON object with a 'meta' object")
    meta: dict[str, Any] = payload["meta"]
    version = 1 if payload.get("v") == 1 or meta.get("v") == 1 or "current" in payload else 2
    data = payload.get("data") if version == 2 else payload.get("current")
    previous = payload.get("previous")
    if data is not None and not isinstance(data, dict):
        raise PayloadError("'data'/'current' must be an object or null")
    if previous is not None and not isinstance(previous, dict):
        raise PayloadError("'previous' must be an object or null")
    data = data or {}

    entity = meta.get("entity") if version == 2 else meta.get("object", meta.get("entity"))
    if not isinstance(entity, str) or not entity:
        raise PayloadError("meta lacks the entity (v2 'entity', v1 'object')")
    raw_action = meta.get("action")
    if not isinstance(raw_action, str) or not raw_action:
        raise PayloadError("meta lacks 'action'")
    action = V1_ACTIONS.get(raw_action, raw_action) if version == 1 else raw_action
    if action not in KNOWN_ACTIONS:
        raise PayloadError(f"unknown action {raw_action[:16]!r}")

    entity_id = _int_or_none(meta.get("entity_id"))
    if entity_id is None:
        entity_id = _int_or_none(data.get("id")) or _int_or_none((previous or {}).get("id"))
    if entity_id is None and version == 1:
        entity_id = _int_or_none(meta.get("id"))  # in v1, meta.id is the object's id

    return WebhookEventData(
        event_id=_event_id(payload, meta, entity_id),
        version=version,
        action=action,
        entity=entity,
        entity_id=entity_id,
        change_source=_str_or_none(meta, "change_source"),
        user_id=_int_or_none(meta.get("user_id")),
        timestamp=_timestamp(meta),
        data=data,
        previous=previous,
        merged_to_id=_int_or_none(meta.get("merged_to_id")),
    )


def _event_id(payload: dict[str, Any], meta: dict[str, Any], entity_id: int | None) -> str:
    event_id = meta.get("id")
    # v2 meta.id is the event uuid; v1 meta.id is the object id, which names no event.
    usable = isinstance(event_id, str) and 0 < len(event_id) <= 64
    if usable and event_id != str(entity_id):
        return str(event_id)
    return fallback_event_id(payload)


def fallback_event_id(payload: dict[str, Any]) -> str:
    """A stable id for a payload without an event id: the hash of what every attempt shares."""
    stable = {k: v for k, v in payload.items() if k not in _ATTEMPT_KEYS}
    meta = stable.get("meta")
    if isinstance(meta, dict):
        stable["meta"] = {k: v for k, v in meta.items() if k not in _ATTEMPT_KEYS}
    encoded = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _timestamp(meta: dict[str, Any]) -> datetime | None:
    micro = meta.get("timestamp_micro")
    if isinstance(micro, int) and not isinstance(micro, bool) and micro > 0:
        return datetime.fromtimestamp(micro / 1_000_000, tz=UTC)
    return parse_time(meta.get("timestamp"))


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from epoch seconds, RFC 3339, or v1's 'YYYY-MM-DD HH:MM:SS'."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return parse_time(int(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str_or_none(mapping: dict[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) else None
