"""Headroom of our limiter as the limiter itself reports it, on Redis and in-process."""

from __future__ import annotations

import socket

import redis

from connector.coordination import Coordination
from connector.diagnostics.headroom import (
    IFS,
    IN_PROCESS_NOTE,
    PIPEDRIVE,
    headroom,
    usage_history,
)
from connector.ifs.client import ifs_limits
from connector.pipedrive.client import SEARCH_BUCKET, pipedrive_acquirer
from connector.ratelimit import RedisRateLimiter
from connector.tenants import TenantConfig, parse_tenants
from tests.connector.webhooks.support import tenant_body, unique_tenant


def _tenant() -> TenantConfig:
    tenant_id = unique_tenant("room")
    return parse_tenants({"tenants": {tenant_id: tenant_body()}})[tenant_id]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _use(coordination: Coordination, tenant: TenantConfig) -> None:
    """Spend as the tenant's clients do: two IFS requests, one Pipedrive search and one list."""
    take_ifs = coordination.acquirer(f"ifs:{tenant.id}", lambda bucket: ifs_limits(tenant.ifs))
    take_ifs("ifs", 1)
    take_ifs("ifs", 1)
    take_pipedrive = pipedrive_acquirer(coordination.limiter, tenant.id, tenant.pipedrive)
    take_pipedrive(SEARCH_BUCKET, 20)
    take_pipedrive("pipedrive", 10)


def test_shared_limiter_shows_what_every_process_took_and_reading_books_nothing(
    shared_coordination: Coordination, redis_url: str, redis_prefix: str
) -> None:
    tenant = _tenant()
    # Another process (here: another client of the same Redis) did the spending.
    other = Coordination(
        RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=f"{redis_prefix}rl:")
    )
    _use(other, tenant)

    for _ in range(2):
        ifs = headroom(shared_coordination, tenant, IFS)
        pipedrive = headroom(shared_coordination, tenant, PIPEDRIVE)

        capacity = tenant.ifs.requests_per_minute
        assert ifs == {
            "limits": [
                {
                    "name": "requests",
                    "capacity": capacity,
                    "window_s": 60,
                    "used": 2,
                    "remaining": capacity - 2,
                }
            ]
        }
        used = {limit["name"]: limit["used"] for limit in pipedrive["limits"]}
        assert used == {"burst": 2, "search": 1, "daily": 30}
        daily = pipedrive["limits"][-1]
        assert daily["capacity"] == tenant.pipedrive.daily_budget
        assert daily["remaining"] == daily["capacity"] - 30
        assert "note" not in pipedrive


def test_in_process_limiter_shows_its_own_use_with_a_note() -> None:
    tenant = _tenant()
    coordination = Coordination.from_url(None)

    fresh = headroom(coordination, tenant, IFS)
    assert fresh["note"] == IN_PROCESS_NOTE and "in-process limiter" in fresh["note"]
    assert [limit["used"] for limit in fresh["limits"]] == [0]

    _use(coordination, tenant)
    assert [limit["used"] for limit in headroom(coordination, tenant, IFS)["limits"]] == [2]
    used = {
        limit["name"]: limit["used"]
        for limit in headroom(coordination, tenant, PIPEDRIVE)["limits"]
    }
    assert used == {"burst": 2, "search": 1, "daily": 30}


def test_unreachable_redis_is_an_error_not_an_exception() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{_closed_port()}/0", socket_timeout=2)
    coordination = Coordination(RedisRateLimiter(client), redis=client)

    shown = headroom(coordination, _tenant(), PIPEDRIVE)

    assert set(shown) == {"error"}
    assert shown["error"].startswith("Redis (CONNECTOR_REDIS_URL) unreachable: ")


def test_usage_history_shows_what_the_day_spent_of_which_budget(
    shared_coordination: Coordination, redis_url: str, redis_prefix: str
) -> None:
    tenant = _tenant()
    other = Coordination(
        RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=f"{redis_prefix}rl:")
    )
    _use(other, tenant)

    ifs = usage_history(shared_coordination, tenant, IFS)
    pipedrive = usage_history(shared_coordination, tenant, PIPEDRIVE)

    assert (ifs["cost"], pipedrive["cost"]) == (2, 30)  # IFS requests; Pipedrive tokens
    assert sum(slot["requests"] for slot in pipedrive["slots"]) == 2
    assert pipedrive["budget"] == {
        "name": "daily",
        "capacity": tenant.pipedrive.daily_budget,
        "window_s": 86_400.0,
    }
    assert ifs["budget"]["capacity"] == tenant.ifs.requests_per_minute
    assert (ifs["slot_s"], ifs["span_s"]) == (300, 86_400) and "note" not in ifs

    client = redis.Redis.from_url(f"redis://127.0.0.1:{_closed_port()}/0", socket_timeout=2)
    down = Coordination(RedisRateLimiter(client), redis=client)
    assert set(usage_history(down, tenant, IFS)) == {"error"}
