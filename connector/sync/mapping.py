"""IFS records → Pipedrive payloads (organizations and deals), by the tenant's mapping."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from connector.errors import RecordError
from connector.tenants import TenantConfig

ORGANIZATION_FIELDS = ("ifs_customer_id", "cost_center", "profit_center", "region")
DEAL_FIELDS = ("ifs_order_no", "order_status", "cost_center", "profit_center", "region")


@dataclass(frozen=True)
class PipedriveLayout:
    """What a tenant's Pipedrive account looks like: custom field keys, pipeline and stages."""

    organization_fields: Mapping[str, str]  # logical name → 40-char key
    deal_fields: Mapping[str, str]
    pipeline_id: int
    stage_ids: Mapping[str, int]  # stage name → id


def _text(data: Mapping[str, Any], prop: str) -> str | None:
    value = data.get(prop)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _required(data: Mapping[str, Any], prop: str, what: str) -> str:
    value = _text(data, prop)
    if value is None:
        raise RecordError(f"{what}: required property {prop!r} is missing or empty")
    return value


def customer_properties(tenant: TenantConfig) -> tuple[str, ...]:
    """The CustomerInfo properties `map_customer` reads."""
    return tuple(sorted(set(tenant.customer_mapping.model_dump().values())))


def order_properties(tenant: TenantConfig) -> tuple[str, ...]:
    """The CustomerOrder properties `map_order` reads (the title's placeholders included)."""
    mapping = tenant.order_mapping
    names = {value for key, value in mapping.model_dump().items() if key != "title"}
    names |= {name for _, name, _, _ in string.Formatter().parse(mapping.title) if name}
    return tuple(sorted(names))


def map_customer(
    tenant: TenantConfig, data: Mapping[str, Any], layout: PipedriveLayout
) -> dict[str, Any]:
    """The v2 organization body for one IFS CustomerInfo record."""
    m = tenant.customer_mapping
    customer_id = _required(data, m.customer_id, "IFS customer")
    name = _required(data, m.name, f"IFS customer {customer_id}")
    keys = layout.organization_fields
    body: dict[str, Any] = {
        "name": name,
        "custom_fields": {
            keys["ifs_customer_id"]: customer_id,
            keys["cost_center"]: _text(data, m.cost_center),
            keys["profit_center"]: _text(data, m.profit_center),
            keys["region"]: _text(data, m.region),
        },
    }
    country = _text(data, m.country)
    if country:
        body["address"] = {"value": country, "country": country}
    return body


class _Properties(dict[str, Any]):
    # Missing properties render as empty in the deal title rather than failing the record.
    def __missing__(self, key: str) -> str:
        return ""


def _title(template: str, data: Mapping[str, Any]) -> str:
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    rendered = template.format_map(_Properties({name: data.get(name) or "" for name in fields}))
    return " ".join(rendered.split())


def _amount(data: Mapping[str, Any], prop: str, order_no: str) -> float:
    value = data.get(prop)
    if value is None:
        return 0.0
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise RecordError(f"IFS order {order_no}: {prop!r} is not a number: {value!r}") from None


def map_order(
    tenant: TenantConfig,
    data: Mapping[str, Any],
    layout: PipedriveLayout,
    organization_id: int,
) -> dict[str, Any]:
    """The v2 deal body for one IFS CustomerOrder, with stage/status from the stage map."""
    m = tenant.order_mapping
    order_no = _required(data, m.order_no, "IFS order")
    state = _required(data, m.status, f"IFS order {order_no}")
    currency = _required(data, m.currency, f"IFS order {order_no}")
    rule = tenant.rule_for_state(state)
    if rule is None:
        raise RecordError(f"IFS order {order_no}: state {state!r} has no rule in the stage map")
    keys = layout.deal_fields
    body: dict[str, Any] = {
        "title": _title(m.title, data) or order_no,
        "value": _amount(data, m.value, order_no),
        "currency": currency,
        "org_id": organization_id,
        "pipeline_id": layout.pipeline_id,
        "status": rule.deal_status,
        "custom_fields": {
            keys["ifs_order_no"]: order_no,
            keys["order_status"]: state,
            keys["cost_center"]: _text(data, m.cost_center),
            keys["profit_center"]: _text(data, m.profit_center),
            keys["region"]: _text(data, m.region),
        },
    }
    if rule.stage is not None:
        body["stage_id"] = layout.stage_ids[rule.stage]
    return body


def changed_fields(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> dict[str, Any]:
    """The part of `current` that differs from what was last pushed (custom fields per key).

    Patching only the difference leaves changes made in Pipedrive alone (a stage a sales
    user moved stays moved) until IFS itself changes that value.
    """
    if previous is None:
        return dict(current)
    changes: dict[str, Any] = {}
    for name, value in current.items():
        if name == "custom_fields":
            before = previous.get("custom_fields") or {}
            fields = {k: v for k, v in value.items() if before.get(k, object()) != v}
            if fields:
                changes["custom_fields"] = fields
        elif previous.get(name, object()) != value:
            changes[name] = value
    return changes
