"""Fixtures for the IFS client tests: a client pointed at the simulator with quick retries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.http import RetryPolicy
from connector.ifs.client import IfsClient
from connector.ifs.entity_sets import EntitySet
from connector.tenants import IfsConfig
from tests.fixtures.ifs_sim import IfsSimHandle

QUICK = RetryPolicy(max_tries=4, base_s=0.001, cap_s=0.01, max_time_s=60)


class Waits(list[float]):
    """The waits the client asked for between attempts (recorded instead of slept)."""


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_ifs_client(ifs_sim: IfsSimHandle, waits: Waits) -> Iterator[Callable[..., IfsClient]]:
    clients: list[IfsClient] = []

    def make(**overrides: Any) -> IfsClient:
        fields = {
            "base_url": ifs_sim.url,
            "namespace": ifs_sim.namespace,
            "client_id": ifs_sim.client_id,
            **overrides.pop("config", {}),
        }
        config = IfsConfig(**fields)
        options: dict[str, Any] = {
            "tenant_id": "acme",
            "orders": EntitySet(config.order_projection, config.order_entity_set, "OrderNo"),
            "policy": QUICK,
            "sleep": waits.append,
        }
        options.update(overrides)
        secret = options.pop("client_secret", ifs_sim.client_secret)
        client = IfsClient(config, secret, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ifs_client(make_ifs_client: Callable[..., IfsClient]) -> IfsClient:
    return make_ifs_client()
