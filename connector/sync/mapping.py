"""IFS records → Pipedrive payloads (organizations and deals), by the tenant's mapping."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from connector.errors import RecordError
from connector.tenants import ExtraField, TenantConfig

ORGANIZATION_FIELDS = ("ifs_customer_id", "cost_center", "profit_center", "region")
DEAL_FIELDS = ("ifs_order_no", "order_status", "cost_center", "profit_center", "region")


@dataclass(frozen=True)
class PipedriveLayout:
    """What a tenant's Pipedrive account looks like: custom field keys, pipeline and stages."""

    organization_fields: Mapping[str, str]  # logical name → 40-char key
    deal_fields: Mapping[str, str]
    pipeline_id: int
    stage_ids: Mapping[str, int]  # stage name → id
    # Enum fields: logical name → option label → option id (the value v2 takes).
    organization_options: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    deal_options: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def extra_field(name: str) -> str:
    """The logical field name of `extra.<name>`: apart from the built-in fields' names."""
    return f"extra.{name}"


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
    mapping = tenant.customer_mapping
    names = set(mapping.model_dump(exclude={"extra"}).values())
    names |= {extra.property for extra in mapping.extra.values()}
    return tuple(sorted(names))


def order_properties(tenant: TenantConfig) -> tuple[str, ...]:
    """The CustomerOrder properties `map_order` reads (the title's placeholders included)."""
    mapping = tenant.order_mapping
    names = set(mapping.model_dump(exclude={"extra", "title"}).values())
    names |= {name for _, name, _, _ in string.Formatter().parse(mapping.title) if name}
    names |= {extra.property for extra in mapping.extra.values()}
    return tuple(sorted(names))


def _number(value: Any, prop: str, what: str) -> float:
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise RecordError(f"{what}: {prop!r} is not a number: {value!r}") from None


def _extra_value(
    where: str,
    extra: ExtraField,
    data: Mapping[str, Any],
    what: str,
    option_ids: Mapping[str, int],
    currency: str | None,
) -> Any:
    """The v2 custom field value of one extra field (None clears the field)."""
    value = data.get(extra.property)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    prop = extra.property
    if extra.type == "number":
        return _number(value, prop, what)
    if extra.type == "monetary":
        # v2 takes a monetary field as its two subfields (value and currency).
        return {"value": _number(value, prop, what), "currency": extra.currency or currency}
    if extra.type == "date":
        try:  # Edm.Date is YYYY-MM-DD; Edm.DateTimeOffset starts with it
            return date.fromisoformat(str(value)[:10]).isoformat()
        except ValueError:
            raise RecordError(f"{what}: {prop!r} is not a date: {value!r}") from None
    text = str(value).strip()
    if extra.type == "enum":
        label = (extra.options or {}).get(text)
        if label is None:
            raise RecordError(
                f"{what}: {prop} is {text!r}, which {where}.options does not map (it maps "
                f"{', '.join(sorted(extra.options or {}))}): add {text}: <option label> there"
            )
        option_id = option_ids.get(label)
        if option_id is None:  # provisioning checks every label: the field changed since
            raise RecordError(
                f"{what}: the Pipedrive field {extra.field!r} has no option {label!r} "
                f"(for {prop} {text!r}): run `ml-connector check` to see the fix"
            )
        return option_id
    return text


def _extra_values(
    where: str,
    extras: Mapping[str, ExtraField],
    data: Mapping[str, Any],
    what: str,
    keys: Mapping[str, str],
    options: Mapping[str, Mapping[str, int]],
    currency: str | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, extra in extras.items():
        logical = extra_field(name)
        option_ids = options.get(logical, {})
        values[keys[logical]] = _extra_value(
            f"{where}.extra.{name}", extra, data, what, option_ids, currency
        )
    return values


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
            **_extra_values(
                "customer_mapping",
                m.extra,
                data,
                f"IFS customer {customer_id}",
                keys,
                layout.organization_options,
            ),
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
    return _number(value, prop, f"IFS order {order_no}")


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
            **_extra_values(
                "order_mapping",
                m.extra,
                data,
                f"IFS order {order_no}",
                keys,
                layout.deal_options,
                currency,
            ),
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
