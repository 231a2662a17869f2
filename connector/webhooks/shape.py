"""What a Pipedrive webhook delivery must look like before anything of it is stored.

An authenticated body is still data from outside: before it reaches the database it must be
JSON that Postgres and the worker can take (bounded nesting, no NUL or lone surrogate in any
string, no NaN or numbers past 64 bits where the connector keeps them) and carry the fields
the connector reads with the types Pipedrive sends. Pipedrive's webhooks v2 (the version the
connector registers) put ids in `meta` as strings of digits ("123") and numbers in `data` /
`previous` as numbers; v1 sends ids as numbers everywhere. Fields the connector does not
read are left alone (Pipedrive adds meta keys over time), except for the nesting limit.

`check_shape` raises PayloadError with a reason that names the field, which the receiver
answers as 400 (Pipedrive then stops retrying a payload that can never be stored).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from connector.webhooks.events import KNOWN_ACTIONS, V1_ACTIONS, PayloadError, parse_time

# Pipedrive's deepest payloads (custom fields of type address or monetary inside `data`)
# nest 4 levels; 16 leaves room for fields added later and still stops pathological input.
MAX_DEPTH = 16
MAX_ID = 2**63 - 1  # the BIGINT the ids are kept in
MAX_EVENT_ID = 64
ENTITY = re.compile(r"^[a-z][a-z_]{0,31}$")
_SURROGATE = re.compile("[\ud800-\udfff\x00]")

# (where, field) → the kinds of value Pipedrive sends there.
_V2_META_IDS = ("entity_id", "user_id", "company_id", "webhook_id", "merged_to_id")
# Only what the stage push reads: v1 and v2 differ in the rest (v1's person_id may be an object).
_DEAL_IDS = ("id", "stage_id", "pipeline_id")
DEAL_STATUSES = {"open", "won", "lost", "deleted"}


def decode(body: bytes) -> Any:
    """The JSON of a body; PayloadError for anything Python's JSON reads but Postgres or a
    strict reader would not (NaN, Infinity, numbers that overflow a double)."""

    def refuse_constant(name: str) -> Any:
        raise PayloadError(f"body holds {name}, which is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise PayloadError("body holds a number out of range")
        return value

    try:
        return json.loads(body, parse_constant=refuse_constant, parse_float=finite)
    except RecursionError:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    except PayloadError:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError("body is not valid JSON") from error


def check_shape(payload: Any, body: bytes | None = None) -> None:
    """PayloadError unless `payload` is a webhook delivery of version 1 or 2 that can be stored.
    With the raw `body` it was decoded from, the walk of every value is left out when the
    bytes show that no value can fail it (`_tree_is_plain`)."""
    if body is None or not _tree_is_plain(body):
        _check_tree(payload)
    if not isinstance(payload, dict):
        raise PayloadError("expected a JSON object")
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise PayloadError("'meta' must be an object")
    version = 1 if payload.get("v") == 1 or meta.get("v") == 1 or "current" in payload else 2
    data_key = "data" if version == 2 else "current"
    for key in (data_key, "previous"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise PayloadError(f"'{key}' must be an object or null")
    _check_meta(meta, version)
    action = meta["action"]
    action = V1_ACTIONS.get(action, action) if version == 1 else action
    data, previous = payload.get(data_key), payload.get("previous")
    if action in ("create", "change") and data is None:
        raise PayloadError(f"a {action} event needs '{data_key}'")
    entity = meta.get("entity") if version == 2 else meta.get("object", meta.get("entity"))
    if entity == "deal":
        for key, record in ((data_key, data), ("previous", previous)):
            if record is not None:
                _check_deal(key, record)
    _check_entity_id(meta, version, data, previous)


_LONG_NUMBER = re.compile(rb"[0-9]{19}")  # MAX_ID has 19 digits: anything past it has more


def _tree_is_plain(body: bytes) -> bool:
    """Whether `_check_tree` must pass for what `body` decodes to, seen in the bytes (scans
    in C, where the walk visits every value in Python, the most of the shape check's time).
    Conservative: text that only might fail (in a string, say) leaves the walk to decide.

    - No NUL byte: json.loads then decodes UTF-8 (UTF-16 or 32 JSON has one in every ASCII
      character), and a raw NUL is no JSON anyway.
    - No backslash-u escape, and no 0xED byte (which starts the UTF-8 form of a surrogate,
      that json.loads' "surrogatepass" lets through): no string or key holds a NUL or an
      unpaired surrogate.
    - No run of 19 digits: no number past 64 bits.
    - Fewer opening brackets than MAX_DEPTH: no nesting as deep as the limit.
    """
    return (
        b"\x00" not in body
        and b"\\u" not in body
        and b"\xed" not in body
        and body.count(b"{") + body.count(b"[") < MAX_DEPTH
        and _LONG_NUMBER.search(body) is None
    )


def _check_tree(payload: Any) -> None:
    """Bounded nesting and storable strings, walked without recursion."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise PayloadError("a string holds a NUL or an unpaired surrogate")
            continue
        if isinstance(value, dict):
            children: Any = value.values()
            for key in value:
                if _SURROGATE.search(key):
                    raise PayloadError("a key holds a NUL or an unpaired surrogate")
        elif isinstance(value, list):
            children = value
        else:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ID:
                raise PayloadError("a number is larger than 64 bits")
            continue
        if depth >= MAX_DEPTH and children:
            raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _check_meta(meta: dict[str, Any], version: int) -> None:
    action = meta.get("action")
    if not isinstance(action, str) or not action:
        raise PayloadError("meta.action must be a non-empty string")
    known = V1_ACTIONS if version == 1 else KNOWN_ACTIONS
    if action not in known:
        raise PayloadError(f"meta.action {action[:16]!r} is not a webhook action")
    entity_key = "entity" if version == 2 else ("object" if "object" in meta else "entity")
    entity = meta.get(entity_key)
    if not isinstance(entity, str) or not ENTITY.match(entity):
        raise PayloadError(f"meta.{entity_key} must be an entity name such as 'deal'")
    event_id = meta.get("id")
    if version == 2:
        if event_id is not None and (
            not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID
        ):
            raise PayloadError(f"meta.id must be the event's id (a string of 1-{MAX_EVENT_ID})")
    elif event_id is not None and not _is_id(event_id) and not isinstance(event_id, str):
        raise PayloadError("meta.id must be a number or a string")
    if isinstance(event_id, str) and len(event_id) > MAX_EVENT_ID:
        raise PayloadError(f"meta.id is longer than {MAX_EVENT_ID} characters")
    for key in _V2_META_IDS:
        value = meta.get(key)
        if value is not None and not _is_id(value):
            raise PayloadError(f"meta.{key} must be an id (a number, or a string of digits)")
    for key in ("change_source", "version", "type", "host"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise PayloadError(f"meta.{key} must be a string")
    if isinstance(meta.get("change_source"), str) and len(meta["change_source"]) > 16:
        raise PayloadError("meta.change_source is longer than 16 characters")
    for key in ("attempt", "timestamp_micro"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise PayloadError(f"meta.{key} must be a whole number")
    _check_timestamp(meta.get("timestamp"))


def _check_timestamp(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError("meta.timestamp must be a time (RFC 3339 text or epoch seconds)")
    if parse_time(value) is None:
        raise PayloadError("meta.timestamp is not a time Pipedrive sends")


def _check_deal(where: str, deal: dict[str, Any]) -> None:
    """The deal fields the stage push reads: numbers as numbers (v1 and v2 alike)."""
    for key in _DEAL_IDS:
        value = deal.get(key)
        if value is not None and not _is_number_id(value):
            raise PayloadError(f"{where}.{key} must be a number")
    status = deal.get("status")
    if status is not None and (not isinstance(status, str) or status not in DEAL_STATUSES):
        raise PayloadError(f"{where}.status must be one of {', '.join(sorted(DEAL_STATUSES))}")


def _check_entity_id(
    meta: dict[str, Any],
    version: int,
    data: dict[str, Any] | None,
    previous: dict[str, Any] | None,
) -> None:
    """The record the event is about must be named, and consistently."""
    named = meta.get("entity_id")
    if named is None and version == 1 and _is_id(meta.get("id")):
        named = meta["id"]  # v1's meta.id is the object's id
    for where, record in (("data" if version == 2 else "current", data), ("previous", previous)):
        record_id = (record or {}).get("id")
        if record_id is None:
            continue
        if not _is_number_id(record_id) and not _is_id(record_id):
            raise PayloadError(f"{where}.id must be an id")
        if named is None:
            named = record_id
        elif int(record_id) != int(named):
            raise PayloadError(f"{where}.id differs from the event's entity id")
    if named is None:
        raise PayloadError("the event names no record (meta.entity_id)")


def _is_number_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _is_id(value: Any) -> bool:
    if _is_number_id(value):
        return True
    return (
        isinstance(value, str)
        and 0 < len(value) <= 19
        and value.isascii()
        and value.isdigit()
        and int(value) <= MAX_ID
    )
