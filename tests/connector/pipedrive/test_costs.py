"""The token cost table equals `x-token-cost` in the official Pipedrive OpenAPI specs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from connector.pipedrive.costs import OPERATIONS
from tests.data import PIPEDRIVE_SPECS

SPEC_DIR = PIPEDRIVE_SPECS


@pytest.fixture(scope="module")
def specs() -> dict[str, dict[str, Any]]:
    if not SPEC_DIR.is_dir():
        pytest.fail(f"Pipedrive specs not present at {SPEC_DIR}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaded = {}
    for version in ("v1", "v2"):
        with (SPEC_DIR / f"openapi-{version}.yaml").open() as handle:
            loaded[version] = yaml.load(handle, Loader=loader)
    return loaded


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_table_cost_equals_spec_x_token_cost(specs: dict[str, dict[str, Any]], name: str) -> None:
    op = OPERATIONS[name]
    paths = specs[op.version]["paths"]
    assert op.path in paths, f"{op.version} spec has no path {op.path}"
    spec_op = paths[op.path].get(op.method.lower())
    assert spec_op is not None, f"{op.version} spec has no {op.method} {op.path}"
    assert op.cost == int(spec_op["x-token-cost"])


def test_search_operations_are_recognised_as_search() -> None:
    searches = {name for name, op in OPERATIONS.items() if op.is_search}
    assert searches == {"organizations.search", "deals.search"}


def test_url_path_uses_version_prefix() -> None:
    assert OPERATIONS["deals.get"].url_path(id=7) == "/api/v2/deals/7"
    assert OPERATIONS["webhooks.delete"].url_path(id=3) == "/v1/webhooks/3"
