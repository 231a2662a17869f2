"""Where an IFS entity set lives and which property keys it: paths, key segments, actions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from connector.tenants import TenantConfig

_ACTION = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def key_segment(entity_set: str, key_property: str, value: str) -> str:
    """`CustomerOrderSet(OrderNo='O''1%2F2')`: the quote doubled, then URL-encoded."""
    escaped = quote(str(value).replace("'", "''"), safe="")
    return f"{entity_set}({key_property}='{escaped}')"


@dataclass(frozen=True)
class EntitySet:
    """One entity set of one projection, keyed by `key` (the property the tenant maps)."""

    projection: str  # e.g. CustomerOrderHandling.svc
    name: str  # e.g. CustomerOrderSet
    key: str  # e.g. OrderNo

    @property
    def path(self) -> str:
        """`CustomerOrderHandling.svc/CustomerOrderSet`, relative to the projection root."""
        return f"{self.projection}/{self.name}"

    def record_path(self, value: str) -> str:
        """`CustomerOrderHandling.svc/CustomerOrderSet(OrderNo='…')`."""
        return f"{self.projection}/{key_segment(self.name, self.key, value)}"

    def action_name(self, action: str) -> str:
        """`IfsApp.CustomerOrderHandling.CustomerOrder_Release` for action "Release"."""
        if not _ACTION.match(action):
            raise ValueError(f"not an action name: {action!r}")
        namespace = self.projection.removesuffix(".svc")
        return f"IfsApp.{namespace}.{self.name.removesuffix('Set')}_{action}"


def customer_set(tenant: TenantConfig) -> EntitySet:
    """The tenant's customers, keyed by its `customer_mapping.customer_id` property."""
    config = tenant.ifs
    return EntitySet(
        config.customer_projection, config.customer_entity_set, tenant.customer_mapping.customer_id
    )


def order_set(tenant: TenantConfig) -> EntitySet:
    """The tenant's customer orders, keyed by its `order_mapping.order_no` property."""
    config = tenant.ifs
    return EntitySet(
        config.order_projection, config.order_entity_set, tenant.order_mapping.order_no
    )
