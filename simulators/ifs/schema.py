"""The description of the simulated projections: entity types (property names, Edm types,
facets, key, what is updatable), enum types and the bound actions with their parameters.

Behaviour (`state.py`, `app.py`) and `$metadata` (`metadata.py`) both read this description,
so what the simulator accepts and what its metadata says cannot disagree."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
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


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ActionParameter:
    """A non-binding parameter of a bound action; a non-nullable one is required."""

    name: str
    edm_type: str
    nullable: bool = True
    max_length: int | None = None
    # The order property the value is kept in (IFS stores e.g. the cancel reason on the order).
    stored_in: str | None = None


@dataclass(frozen=True)
class BoundAction:
    """A state action bound to an entity: `POST Set(Key='x')/IfsApp.<Projection>.<Entity>_<name>`.

    `target` None means "back to the state remembered by an action with `remembers_state`".
    """

    name: str
    allowed_from: frozenset[str]
    target: str | None
    parameters: tuple[ActionParameter, ...] = ()
    remembers_state: bool = False
    sets: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def parameter(self, name: str) -> ActionParameter | None:
        return next((p for p in self.parameters if p.name == name), None)


_CANCEL_FROM = frozenset({"Planned", "Released", "Blocked"})

# The bound state actions of CustomerOrder. `Cancel` takes an optional reason (the default
# stage map cancels without one); `CancelOrder` is the installation's variant that needs one.
ORDER_ACTIONS: tuple[BoundAction, ...] = (
    BoundAction("Release", frozenset({"Planned"}), "Released"),
    BoundAction("Reserve", frozenset({"Released"}), "Reserved"),
    BoundAction(
        "Block",
        frozenset({"Planned", "Released", "Reserved"}),
        "Blocked",
        remembers_state=True,
        sets=MappingProxyType({"BlockedType": "ManualBlocked"}),
    ),
    BoundAction(
        "Unblock",
        frozenset({"Blocked"}),
        None,
        sets=MappingProxyType({"BlockedType": "NotBlocked", "BlockedReason": None}),
    ),
    BoundAction(
        "Cancel",
        _CANCEL_FROM,
        "Cancelled",
        (ActionParameter("CancelReason", STRING, max_length=10, stored_in="CancelReason"),),
    ),
    BoundAction(
        "CancelOrder",
        _CANCEL_FROM,
        "Cancelled",
        (
            ActionParameter(
                "CancelReason", STRING, nullable=False, max_length=10, stored_in="CancelReason"
            ),
        ),
    ),
    BoundAction("Deliver", frozenset({"Reserved", "Picked", "PartiallyDelivered"}), "Delivered"),
)


@dataclass(frozen=True)
class EntityType:
    """One entity type of a projection, as Olingo sees it in `$metadata`.

    `read_only` properties are refused by PATCH (the key and the envelope IFS computes);
    `required` ones are never null (Nullable="false"); `max_lengths` bound string values.
    """

    name: str
    projection: str
    entity_set: str
    key: str
    key_column: str
    properties: dict[str, str]
    stateful: bool
    read_only: frozenset[str] = field(default_factory=frozenset)
    required: frozenset[str] = field(default_factory=frozenset)
    max_lengths: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    enum_types: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY)
    actions: tuple[BoundAction, ...] = ()

    @property
    def luname(self) -> str:
        return self.name

    @property
    def namespace(self) -> str:
        """The schema namespace of the projection: `IfsApp.CustomerOrderHandling`."""
        return f"IfsApp.{self.projection}"

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def keyref(self, key_value: str) -> str:
        return f"{self.key_column}={key_value}^"

    def enum_members(self, enum_type: str) -> tuple[str, ...]:
        return self.enum_types[enum_type]

    def action(self, name: str) -> BoundAction | None:
        """The bound action called `name` (as in `<Entity>_<name>`), or None."""
        return next((a for a in self.actions if a.name == name), None)


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
        required=frozenset(
            {"OrderNo", "luname", "keyref", "Objstate", "Contract", "Company", "CustomerNo"}
        ),
        max_lengths=MappingProxyType(
            {
                "OrderNo": 12,
                "Contract": 5,
                "Company": 20,
                "CustomerNo": 20,
                "CurrencyCode": 3,
                "CancelReason": 10,
            }
        ),
        enum_types=MappingProxyType({ORDER_STATE_ENUM: ORDER_STATES}),
        actions=ORDER_ACTIONS,
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
        required=frozenset({key, "luname", "keyref", "Name"}),
        max_lengths=MappingProxyType({key: 20, "Country": 2}),
    )


def entity_types(customer_key: str = "CustomerId") -> dict[tuple[str, str], EntityType]:
    """(projection, entity set) → entity type, for URL routing."""
    types = (customer_order(), customer_info(customer_key))
    return {(t.projection, t.entity_set): t for t in types}


def projection_types(projection: str, customer_key: str = "CustomerId") -> tuple[EntityType, ...]:
    """The entity types one projection serves (empty for an unknown projection)."""
    return tuple(t for (p, _), t in entity_types(customer_key).items() if p == projection)
