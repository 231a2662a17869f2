"""Entity types of the simulated projections: property names, Edm types, keys, enum types."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

# Olingo-facing kinds the filter parser reasons about.
STRING = "Edm.String"
BOOLEAN = "Edm.Boolean"
DECIMAL = "Edm.Decimal"
DATE = "Edm.Date"
DATETIME = "Edm.DateTimeOffset"

ORDER_STATE_ENUM = "IfsApp.CustomerOrderHandling.CustomerOrderState"
ORDER_STATES = (
    "Planned",
    "Released",
    "Reserved",
    "Picked",
    "PartiallyDelivered",
    "Delivered",
    "Invoiced",
    "Cancelled",
    "Blocked",
)

# Properties present on every entity besides `@odata.etag`; IFS exposes them as columns.
ENVELOPE = ("luname", "keyref", "Objstate", "Objgrants")

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")

# Null in the real sample, so their type cannot be read off the value.
_ORDER_NULL_TYPES = {
    "PayTermBaseDate": DATE,
    "TaxIdValidatedDate": DATE,
    "ContractRevSeq": DECIMAL,
    "ContractItemNo": DECIMAL,
    "Priority": DECIMAL,
    "CaseId": DECIMAL,
    "TaskId": DECIMAL,
    "FixDelivFreight": DECIMAL,
}

# Custom attributes this installation adds to CustomerOrder (GL dimensions, CRM stage).
ORDER_CUSTOM_FIELDS = {
    "Cf_Cost_Center": STRING,
    "Cf_Profit_Center": STRING,
    "Cf_Crm_Stage": STRING,
}

CUSTOMER_FIELDS: dict[str, str] = {
    "luname": STRING,
    "keyref": STRING,
    "Objgrants": STRING,
    "CustomerId": STRING,
    "Name": STRING,
    "CreationDate": DATE,
    "AssociationNo": STRING,
    "DefaultLanguage": STRING,
    "Country": STRING,
    "PartyType": STRING,
    "CustomerCategory": STRING,
    "CorporateForm": STRING,
    "B2bCustomer": BOOLEAN,
    "Cf_Cost_Center": STRING,
    "Cf_Profit_Center": STRING,
    "Cf_Region": STRING,
}


@dataclass(frozen=True)
class EntityType:
    """One entity type of a projection, as Olingo sees it in `$metadata`."""

    name: str
    projection: str
    entity_set: str
    key: str
    key_column: str
    properties: dict[str, str]
    stateful: bool
    read_only: frozenset[str] = field(default_factory=frozenset)

    @property
    def luname(self) -> str:
        return self.name

    def keyref(self, key_value: str) -> str:
        return f"{self.key_column}={key_value}^"

    def enum_members(self, enum_type: str) -> tuple[str, ...]:
        if enum_type == ORDER_STATE_ENUM:
            return ORDER_STATES
        raise KeyError(enum_type)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        return DECIMAL
    if isinstance(value, str) and _DATE_RE.match(value):
        return DATE
    if isinstance(value, str) and _DATETIME_RE.match(value):
        return DATETIME
    return STRING


@cache
def order_sample() -> dict[str, Any]:
    """The real `CustomerOrderSet(OrderNo='C1000038587')` response the simulator copies."""
    text = resources.files("simulators.ifs").joinpath("data/customer_order_sample.json")
    return dict(json.loads(text.read_text(encoding="utf-8")))


@cache
def customer_order() -> EntityType:
    properties: dict[str, str] = {}
    for name, value in order_sample().items():
        if name == "@odata.etag":
            continue
        properties[name] = _ORDER_NULL_TYPES.get(name, _kind_of(value))
    properties["Objstate"] = ORDER_STATE_ENUM
    properties.update(ORDER_CUSTOM_FIELDS)
    return EntityType(
        name="CustomerOrder",
        projection="CustomerOrderHandling",
        entity_set="CustomerOrderSet",
        key="OrderNo",
        key_column="ORDER_NO",
        properties=properties,
        stateful=True,
        read_only=frozenset({"OrderNo", *ENVELOPE}),
    )


@cache
def customer_info(key: str = "CustomerId") -> EntityType:
    """CustomerInfo; `key` renames the key property, as an installation may call it."""
    properties = {
        (key if name == "CustomerId" else name): kind for name, kind in CUSTOMER_FIELDS.items()
    }
    return EntityType(
        name="CustomerInfo",
        projection="CustomerHandling",
        entity_set="CustomerInfoSet",
        key=key,
        key_column="CUSTOMER_ID",
        properties=properties,
        stateful=False,
        read_only=frozenset({key, "luname", "keyref", "Objgrants"}),
    )


def entity_types(customer_key: str = "CustomerId") -> dict[tuple[str, str], EntityType]:
    """(projection, entity set) → entity type, for URL routing."""
    types = (customer_order(), customer_info(customer_key))
    return {(t.projection, t.entity_set): t for t in types}
