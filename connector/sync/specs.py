"""The synced entities, one spec each: where IFS keeps it, how it maps, where it lands in
Pipedrive, and what it needs synced first. The engine reads these and never the entity name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector import jobs
from connector.errors import RecordError
from connector.ifs.entity_sets import EntitySet, customer_set, order_set
from connector.pipedrive.client import Resource
from connector.storage.idmap import CUSTOMER, ORDER
from connector.sync.mapping import (
    PipedriveLayout,
    customer_properties,
    map_customer,
    map_order,
    order_properties,
)
from connector.tenants import TenantConfig

# (tenant, IFS properties, layout, Pipedrive id of the parent record or None) → v2 body
MapRecord = Callable[[TenantConfig, Mapping[str, Any], PipedriveLayout, int | None], dict[str, Any]]


@dataclass(frozen=True)
class Parent:
    """A record this entity's records point at, synced first when it is not in Pipedrive yet
    (an order's deal needs its customer's organization)."""

    entity: str
    key_property: Callable[[TenantConfig], str]  # the IFS property holding the parent's key


@dataclass(frozen=True)
class EntitySpec:
    """One synced entity and everything the generic engine needs to plan and upsert it."""

    entity: str  # name in the id map and the audit log
    job: str  # the job that upserts one record (connector.jobs)
    ifs_set: Callable[[TenantConfig], EntitySet]  # entity set and key property, per tenant
    properties: Callable[[TenantConfig], tuple[str, ...]]  # what the mapping reads ($select)
    map: MapRecord
    resource: Resource  # Pipedrive v2 resource the records land in
    fields: Callable[[PipedriveLayout], Mapping[str, str]]  # logical name → custom field key
    key_field: str  # logical custom field holding the IFS key
    parent: Parent | None = None
    # Body fields that sales users own once they moved them: `--full` corrects them only
    # when IFS changed them since the connector last wrote them.
    sales_owned: tuple[str, ...] = ()
    # Archived records leave the resource's list (v2 deals) but are present all the same.
    lists_archived: bool = False
    # Gone from IFS under on_ifs_missing: close, the record is closed (a deal marked lost);
    # others (organizations) are left alone.
    closes_when_missing: bool = False


def _map_customer(
    tenant: TenantConfig, data: Mapping[str, Any], layout: PipedriveLayout, _: int | None
) -> dict[str, Any]:
    return map_customer(tenant, data, layout)


def _map_order(
    tenant: TenantConfig, data: Mapping[str, Any], layout: PipedriveLayout, parent: int | None
) -> dict[str, Any]:
    if parent is None:  # the engine resolves the organization before mapping
        raise RecordError("IFS order: its customer's organization is not known")
    return map_order(tenant, data, layout, parent)


CUSTOMERS = EntitySpec(
    entity=CUSTOMER,
    job=jobs.SYNC_CUSTOMER,
    ifs_set=customer_set,
    properties=customer_properties,
    map=_map_customer,
    resource="organizations",
    fields=lambda layout: layout.organization_fields,
    key_field="ifs_customer_id",
)

ORDERS = EntitySpec(
    entity=ORDER,
    job=jobs.SYNC_ORDER,
    ifs_set=order_set,
    properties=order_properties,
    map=_map_order,
    resource="deals",
    fields=lambda layout: layout.deal_fields,
    key_field="ifs_order_no",
    parent=Parent(CUSTOMER, lambda tenant: tenant.order_mapping.customer_no),
    sales_owned=("stage_id", "status"),
    lists_archived=True,
    closes_when_missing=True,
)

# In dependency order: a full run plans customers before the orders that point at them.
SPECS: dict[str, EntitySpec] = {spec.entity: spec for spec in (CUSTOMERS, ORDERS)}
ENTITIES = tuple(SPECS)
JOB_FOR_ENTITY: dict[str, str] = {entity: spec.job for entity, spec in SPECS.items()}
