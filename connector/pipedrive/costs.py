"""Token costs (`x-token-cost` in the official OpenAPI specs) of the Pipedrive calls we make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ApiVersion = Literal["v1", "v2"]


@dataclass(frozen=True)
class Operation:
    """One Pipedrive endpoint: API version, HTTP method, spec path template and token cost."""

    version: ApiVersion
    method: str
    path: str
    cost: int

    @property
    def prefix(self) -> str:
        """URL prefix under the company's api_domain."""
        return "/api/v2" if self.version == "v2" else "/v1"

    def url_path(self, **params: object) -> str:
        """The request path with `{id}` style placeholders filled in."""
        return self.prefix + self.path.format(**params)

    @property
    def is_search(self) -> bool:
        """Search endpoints have their own, smaller burst limit."""
        return self.path.endswith("/search")


def _op(version: ApiVersion, method: str, path: str, cost: int) -> Operation:
    return Operation(version, method, path, cost)


# Literal values copied from the specs; tests/connector/pipedrive/test_costs.py proves each one
# equals the spec's x-token-cost, so a spec update that changes a cost fails loudly.
OPERATIONS: dict[str, Operation] = {
    # v2 organizations
    "organizations.list": _op("v2", "GET", "/organizations", 10),
    "organizations.create": _op("v2", "POST", "/organizations", 5),
    "organizations.get": _op("v2", "GET", "/organizations/{id}", 1),
    "organizations.update": _op("v2", "PATCH", "/organizations/{id}", 5),
    "organizations.delete": _op("v2", "DELETE", "/organizations/{id}", 3),
    "organizations.search": _op("v2", "GET", "/organizations/search", 20),
    # v2 deals
    "deals.list": _op("v2", "GET", "/deals", 10),
    "deals.create": _op("v2", "POST", "/deals", 5),
    "deals.get": _op("v2", "GET", "/deals/{id}", 1),
    "deals.update": _op("v2", "PATCH", "/deals/{id}", 5),
    "deals.delete": _op("v2", "DELETE", "/deals/{id}", 3),
    "deals.search": _op("v2", "GET", "/deals/search", 20),
    "deals.list_archived": _op("v2", "GET", "/deals/archived", 20),
    # v2 pipelines and stages
    "pipelines.list": _op("v2", "GET", "/pipelines", 5),
    "pipelines.create": _op("v2", "POST", "/pipelines", 5),
    "stages.list": _op("v2", "GET", "/stages", 5),
    "stages.create": _op("v2", "POST", "/stages", 5),
    # v1 custom field definitions
    "dealFields.list": _op("v1", "GET", "/dealFields", 20),
    "dealFields.create": _op("v1", "POST", "/dealFields", 10),
    "organizationFields.list": _op("v1", "GET", "/organizationFields", 20),
    "organizationFields.create": _op("v1", "POST", "/organizationFields", 10),
    # v1 webhooks and the current user
    "webhooks.list": _op("v1", "GET", "/webhooks", 10),
    "webhooks.create": _op("v1", "POST", "/webhooks", 10),
    "webhooks.delete": _op("v1", "DELETE", "/webhooks/{id}", 6),
    "users.me": _op("v1", "GET", "/users/me", 2),
}


def operation(name: str) -> Operation:
    """The operation called `name` (e.g. "deals.search"); KeyError names the unknown one."""
    return OPERATIONS[name]
