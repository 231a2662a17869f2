"""Pipedrive records as the simulator stores them, and their v1/v2 JSON shapes."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
from datetime import UTC, datetime
from typing import Any

# Keys the v2 schemas allow to be null; any other None-valued key is left out of a response,
# because the official schemas declare them non-nullable.
NULLABLE_V2 = {
    "deal": {
        "probability",
        "lost_reason",
        "close_time",
        "origin_id",
        "channel",
        "channel_id",
        "source_lead_id",
        "arr",
        "mrr",
        "acv",
    },
    "organization": {"website", "linkedin", "industry", "annual_revenue", "employee_count"},
}

ENTITY_PLURAL = {"deal": "deals", "organization": "organizations"}

# Custom field types whose values the search endpoints match as text.
SEARCHABLE_FIELD_TYPES = {
    "varchar",
    "varchar_auto",
    "text",
    "double",
    "monetary",
    "phone",
    "address",
}
STRING_FIELD_TYPES = {
    "varchar",
    "varchar_auto",
    "text",
    "phone",
    "address",
    "daterange",
    "time",
    "timerange",
}
NUMBER_FIELD_TYPES = {"double"}
REFERENCE_FIELD_TYPES = {"user", "org", "people", "visible_to"}
# v2 takes a monetary custom field as its subfields (the spec's `subfields`: value, currency)
# and a date as YYYY-MM-DD.
FIELD_TYPES = (
    STRING_FIELD_TYPES
    | NUMBER_FIELD_TYPES
    | REFERENCE_FIELD_TYPES
    | {"enum", "set", "monetary", "date"}
)


class ApiError(Exception):
    """An error answer of the API: HTTP status plus Pipedrive's error body."""

    def __init__(self, status: int, error: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.body = body


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    """v2 timestamps: second resolution, 'Z' suffix."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def v1_time(moment: datetime) -> str:
    """v1 timestamps: 'YYYY-MM-DD HH:MM:SS' in UTC."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def parse_rfc3339(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ApiError(400, f"Invalid RFC3339 date-time: {text!r}") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def new_field_key() -> str:
    """Custom field keys are random 40-character hex strings, different in every account."""
    return secrets.token_hex(20)


def json_number(value: float | int) -> float | int:
    """Pipedrive writes whole numbers without a fraction (100, not 100.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def encode_cursor(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as error:
        raise ApiError(400, "Invalid cursor") from error
    if not isinstance(position, dict):
        raise ApiError(400, "Invalid cursor")
    return position


def render_v2(entity: str, record: dict[str, Any], custom_keys: list[str] | None) -> dict[str, Any]:
    """The v2 JSON of a deal or organization; custom_keys limits the custom fields shown."""
    nullable = NULLABLE_V2[entity]
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "custom_fields":
            continue
        if value is None and key not in nullable:
            continue
        if key == "value" and isinstance(value, float):
            value = json_number(value)
        out[key] = copy.deepcopy(value)
    custom = record["custom_fields"]
    shown = custom.keys() if custom_keys is None else [k for k in custom_keys if k in custom]
    out["custom_fields"] = {key: copy.deepcopy(custom[key]) for key in shown}
    return out


def render_v1(entity: str, record: dict[str, Any]) -> dict[str, Any]:
    """A plausible v1 object for version 1.0 webhooks: custom fields flattened, v1 times."""
    out = {k: copy.deepcopy(v) for k, v in record.items() if k != "custom_fields"}
    for key in ("add_time", "update_time", "won_time", "lost_time", "close_time"):
        if isinstance(out.get(key), str):
            out[key] = out[key].replace("T", " ").rstrip("Z")
    if entity == "organization" and isinstance(record.get("address"), dict):
        out["address"] = record["address"].get("value")
    out["active_flag"] = not record.get("is_deleted", False)
    for key, value in record["custom_fields"].items():
        if isinstance(value, dict) and set(value) == {"value", "currency"}:
            # v1 spreads a monetary field over two keys: `<key>` and `<key>_currency`.
            out[key], out[f"{key}_currency"] = value["value"], value["currency"]
        else:
            out[key] = copy.deepcopy(value)
    return out


# Keys of the v1 deal schema (DealStrict) that are not nullable: left out while they have no value.
V1_DEAL_NOT_NULLABLE = {
    "person_id",
    "org_id",
    "stage_change_time",
    "won_time",
    "lost_time",
    "expected_close_date",
    "archive_time",
}


def render_v1_deal(record: dict[str, Any], org_name: str | None) -> dict[str, Any]:
    """A deal as the v1 API answers it (e.g. `PUT /v1/deals/{id}/merge`)."""
    out = render_v1("deal", record)
    out["value"] = json_number(out["value"])
    out["user_id"] = record["owner_id"]
    out["active"] = record["status"] == "open"
    out["deleted"] = record["is_deleted"]
    out["visible_to"] = str(record["visible_to"])
    if org_name is not None:
        out["org_name"] = org_name
    return {k: v for k, v in out.items() if v is not None or k not in V1_DEAL_NOT_NULLABLE}


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The previous values of the fields that differ (custom fields compared key by key)."""
    previous: dict[str, Any] = {}
    for key, old in before.items():
        new = after.get(key)
        if key == "custom_fields":
            old_custom = old or {}
            new_custom = new or {}
            diff = {
                k: old_custom.get(k)
                for k in set(old_custom) | set(new_custom)
                if old_custom.get(k) != new_custom.get(k)
            }
            if diff:
                previous["custom_fields"] = diff
        elif old != new and key != "update_time":
            previous[key] = copy.deepcopy(old)
    return previous
