"""A runtime on the session's Postgres with one fresh tenant, and a Redis-backed coordination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from connector.coordination import Coordination
from connector.ratelimit import RedisRateLimiter
from connector.runtime import Runtime
from tests.connector.webhooks.support import (
    make_runtime,
    prepare_database,
    tenant_body,
    unique_tenant,
)

MakeRuntime = Callable[..., tuple[Runtime, str]]


@pytest.fixture
def shared_coordination(redis_url: str, redis_prefix: str) -> Iterator[Coordination]:
    client = redis.Redis.from_url(redis_url)
    yield Coordination(
        RedisRateLimiter(client, prefix=f"{redis_prefix}rl:"), redis=client, prefix=redis_prefix
    )
    client.close()


@pytest.fixture
def runtime_for(postgres_url: str) -> Iterator[MakeRuntime]:
    """`runtime_for(**tenant_body)` -> (runtime, tenant id): a tenant no other test uses."""
    prepare_database(postgres_url)
    made: list[Runtime] = []

    def make(body: dict[str, Any] | None = None) -> tuple[Runtime, str]:
        tenant = unique_tenant("diag")
        runtime = make_runtime(postgres_url, {tenant: body or tenant_body()})
        made.append(runtime)
        return runtime, tenant

    yield make
    for runtime in made:
        runtime.close()
